"""The package installs beyond this machine: a wheel holding every sub-package and the
model variants, version ranges instead of pins, and ``mgsv --version``."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUB_PACKAGES = ("media", "features", "models", "index", "retrieval", "editor", "research", "cli", "serve", "mcp")


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """``pip wheel --no-deps`` of a copy of the source (the checkout stays clean)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("mgsv_cli", "models"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [path] = out.glob("mgsv-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_holds_every_sub_package_the_variants_and_the_card(wheel):
    names = set(wheel.namelist())
    for package in SUB_PACKAGES:
        assert f"mgsv_cli/{package}/__init__.py" in names, package
    for module in ("made", "losses", "metrics", "checkpoint", "variants"):
        assert f"mgsv_cli/models/{module}.py" in names
    shipped = {Path(n).name for n in names if n.startswith("mgsv_cli/models/")}
    assert {"made.toml", "tiny.toml", "README.md"} <= shipped
    every_module = {p.relative_to(REPO / "mgsv_cli").as_posix() for p in (REPO / "mgsv_cli").rglob("*.py")}
    assert {f"mgsv_cli/{m}" for m in every_module} <= names


def test_wheel_metadata_has_ranges_and_the_version(wheel):
    from mgsv_cli import __version__

    [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    text = wheel.read(metadata).decode()
    assert f"Version: {__version__}" in text
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not [line for line in requires if "==" in line.split(";")[0]]  # markers may say ==
    assert any(line.startswith("Requires-Dist: torch>=") for line in requires)


def test_pyproject_is_installable_beyond_this_machine():
    project = _pyproject()["project"]
    assert project["requires-python"] == ">=3.10"  # 3.10 through 3.13 and on, no upper bound
    assert not [d for d in project["dependencies"] if "==" in d]
    pins = (REPO / "constraints.txt").read_text()
    assert "torch==" in pins and "torchvision==" in pins  # this build machine's exact wheels
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


def test_version_flag():
    from mgsv_cli import __version__

    done = subprocess.run([sys.executable, "-m", "mgsv_cli", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"mgsv {__version__}"


@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_the_code_compiles_on_every_python_it_claims(version):
    """Syntax of every module on the other Pythons of requires-python, where one is installed."""
    candidates = [str(p) for p in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python"))]
    candidates += [c for c in [shutil.which(f"python{version}")] if c]
    python = next((c for c in candidates if subprocess.run([c, "-c", ""], capture_output=True).returncode == 0), None)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    files = [str(p) for p in (REPO / "mgsv_cli").rglob("*.py")] + [str(p) for p in (REPO / "models").glob("*.py")]
    check = ("import sys\nfor f in sys.argv[1:]:\n"
             "    compile(open(f, encoding='utf-8').read(), f, 'exec', dont_inherit=True)\n")
    done = subprocess.run([python, "-c", check, *files], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
