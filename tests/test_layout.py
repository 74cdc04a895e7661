"""The package's layers: every import (module level or inside a function) must point down.

    base      mgsv_cli, errors, paths, device
    media     ffmpeg I/O, files, beats, synth
    features  the recipe, the encoders, their weights
    models | index      the networks (shipped as mgsv_cli.models from the top-level models/
                        folder) | the track stores (peers: storage knows no network)
    retrieval           the search: derived rows, first stage, rerank, moments
    editor | research   (peers: neither imports the other)
    app       cli, settings, doctor, demo, completion, __main__, serve (the web server and its client)

A module may import its own sub-package and anything in a lower layer, never a higher
one; the module graph has no cycle; and each sub-package imports only what its own
docstring's "May import:" line lists.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {
    "base": 0, "media": 1, "features": 2, "models": 3, "index": 3, "retrieval": 4, "editor": 5, "research": 5,
    "app": 6,
}
PEERS_THAT_MUST_NOT_MEET = {("editor", "research"), ("research", "editor"), ("models", "index"), ("index", "models")}
APP_MODULES = {"cli", "settings", "doctor", "demo", "completion", "__main__", "serve"}
BASE_MODULES = {"errors", "paths", "device"}


def module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` for the whole package, models/ included."""
    found = {}
    for path in sorted((REPO / "mgsv_cli").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((REPO / "models").glob("*.py")):
        name = "mgsv_cli.models" if path.stem == "__init__" else f"mgsv_cli.models.{path.stem}"
        found[name] = path
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # the package's own __init__ (the version)
    head = parts[1]
    if head in APP_MODULES:
        return "app"
    if head in BASE_MODULES:
        return "base"
    if head in LAYERS:
        return head
    raise AssertionError(f"{module}: a module outside every layer; give it a sub-package or a place in LAYERS")


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Every mgsv_cli module ``module`` imports, wherever in the file the import sits."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports a module; "from mod import name" imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "mgsv_cli" or t.startswith("mgsv_cli."))
    return {t for t in found if t != module}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in files.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in graph.items():
        mine = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if (mine, theirs) in PEERS_THAT_MUST_NOT_MEET or LAYERS[theirs] > LAYERS[mine]:
                problems.append(f"{module} ({mine}) imports {target} ({theirs})")
    return sorted(problems)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_every_import_points_down_the_layers():
    assert layer_violations(import_graph()) == []


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_checker_catches_what_it_must():
    """The two rules bite: an upward import, a peer import and a cycle are all reported."""
    graph = {
        "mgsv_cli.media.ffmpeg": {"mgsv_cli.index.store"},  # media reaching up into the index
        "mgsv_cli.editor.render": {"mgsv_cli.research.train"},  # editor and research are peers
        "mgsv_cli.index.store": {"mgsv_cli.index.token_cache"},
        "mgsv_cli.index.token_cache": {"mgsv_cli.index.store"},
    }
    assert layer_violations(graph) == [
        "mgsv_cli.editor.render (editor) imports mgsv_cli.research.train (research)",
        "mgsv_cli.media.ffmpeg (media) imports mgsv_cli.index.store (index)",
    ]
    assert find_cycle(graph) == ["mgsv_cli.index.store", "mgsv_cli.index.token_cache", "mgsv_cli.index.store"]


def test_function_level_and_relative_imports_are_read(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ..index import store\n    import mgsv_cli.editor.render\n")
    known = {"mgsv_cli.index.store", "mgsv_cli.editor.render"}
    assert imports_of("mgsv_cli.media.m", source, known) == known


SUB_PACKAGES = ["media", "features", "index", "retrieval", "editor", "research", "serve", "cli"]


@pytest.mark.parametrize("package", SUB_PACKAGES)
def test_every_sub_package_says_what_it_is_for(package):
    doc = ast.get_docstring(ast.parse((REPO / "mgsv_cli" / package / "__init__.py").read_text()))
    assert doc and "May import" in doc


def may_import(docstring: str) -> set[str] | None:
    """What a package's "May import:" line allows: package or module names (``features.recipe``),
    ``base`` for the base modules; None for "anything"."""
    import re

    line = docstring.split("May import:", 1)[1].split("Never", 1)[0]
    if "anything" in line:
        return None
    allowed = set(re.findall(r"``([a-z_.]+)``", line))
    if "base modules" in line:
        allowed.add("base")
    return allowed


def allowed_by(allowed: set[str] | None, own: str, target: str) -> bool:
    """Whether a module of package ``own`` may import ``target`` under ``allowed``."""
    if allowed is None:
        return True
    parts = target.split(".")
    if len(parts) == 1 or parts[1] in BASE_MODULES:
        return "base" in allowed
    name = ".".join(parts[1:])
    return parts[1] == own or any(name == a or name.startswith(a + ".") for a in allowed)


def docstring_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for package in [*SUB_PACKAGES, "models"]:
        init = REPO / ("models" if package == "models" else f"mgsv_cli/{package}") / "__init__.py"
        allowed = may_import(ast.get_docstring(ast.parse(init.read_text())) or "May import: ")
        for module, targets in graph.items():
            if module.split(".")[1:2] != [package]:
                continue
            problems += [f"{module} imports {target}, which mgsv_cli.{package}'s docstring does not allow"
                         for target in sorted(targets) if not allowed_by(allowed, package, target)]
    return problems


def test_every_package_imports_only_what_its_docstring_allows():
    assert docstring_violations(import_graph()) == []


def test_the_docstring_rule_bites():
    allowed = may_import("x.\n\nMay import: base modules and ``features.recipe``. Never the index.")
    assert allowed == {"base", "features.recipe"}
    assert allowed_by(allowed, "models", "mgsv_cli.errors") and allowed_by(allowed, "models", "mgsv_cli.models.made")
    assert allowed_by(allowed, "models", "mgsv_cli.features.recipe")
    assert not allowed_by(allowed, "models", "mgsv_cli.features.weights")
    assert not allowed_by(allowed, "models", "mgsv_cli.index.backend")
    assert allowed_by(may_import("May import: anything of mgsv."), "cli", "mgsv_cli.index")


def test_models_package_says_what_it_is_for():
    doc = ast.get_docstring(ast.parse((REPO / "models" / "__init__.py").read_text()))
    assert doc and "May import" in doc


def test_tests_mirror_the_packages():
    for package in ("media", "features", "models", "index", "retrieval", "editor", "research", "serve"):
        assert list((REPO / "tests" / package).glob("test_*.py")), f"tests/{package}/ has no tests"
