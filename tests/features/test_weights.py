"""Downloads: clean offline errors, where files land, and presence detection on fake folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mgsv_cli.cli import main
from mgsv_cli.errors import DataError, WeightsMissingError
from mgsv_cli.features import weights as hub
from mgsv_cli.research import dataset, download


@pytest.fixture(autouse=True)
def offline_and_private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for name in ("MGSV_CLIP_WEIGHTS", "MGSV_AST_WEIGHTS", "MGSV_WEIGHTS_DIR"):
        monkeypatch.delenv(name, raising=False)


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


# ---------------------------------------------------------------- offline


def test_fetch_dataset_offline_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as error:
        download.fetch_dataset(tmp_path / "mgsv-ec")
    message = str(error.value)
    assert "cannot reach the Hugging Face hub" in message and "HF_HUB_OFFLINE" in message
    assert str(tmp_path / "mgsv-ec") in message and "dataset/MGSV-EC/" in message
    assert "\n" not in message


def test_download_models_offline_says_what_to_do(tmp_path):
    with pytest.raises(WeightsMissingError) as error:
        hub.download_models(tmp_path / "weights")
    assert "MGSV_CLIP_WEIGHTS" in str(error.value) and "offline" in str(error.value)


def test_cli_offline_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    code, _, err = run_cli(["data", "fetch", str(tmp_path / "ds")], capsys)
    assert code == DataError.exit_code == 4 and "Traceback" not in err and "error:" in err
    code, _, err = run_cli(["models", "download", "--weights-dir", str(tmp_path / "w")], capsys)
    assert code == WeightsMissingError.exit_code == 7 and "Traceback" not in err


# ---------------------------------------------------------------- the dataset layout


def make_layout(root: Path, skip: str = "") -> None:
    for split in dataset.SPLITS:
        if split != skip:
            path = dataset.csv_path(root, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("video_id,music_id\n")
    for folder in dataset.FEATURE_DIRS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)


def test_layout_problems(tmp_path):
    assert len(download.dataset_layout_problems(tmp_path)) == 3 + len(dataset.FEATURE_DIRS)
    make_layout(tmp_path, skip="val")
    assert download.dataset_layout_problems(tmp_path) == [f"missing {dataset.csv_path('', 'val')}"]


def test_fetch_dataset_checks_what_arrived(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, repo_type, local_dir, token=None):
        calls.append((repo_id, repo_type))
        make_layout(Path(local_dir), skip=("test" if len(calls) == 1 else ""))
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(DataError, match="test_data.csv"):
        download.fetch_dataset(tmp_path / "ds")
    assert download.fetch_dataset(tmp_path / "ds") == tmp_path / "ds"
    assert calls == [("xxayt/MGSV-EC", "dataset")] * 2


def test_fetch_dataset_refuses_a_file_as_root(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        download.fetch_dataset(tmp_path / "f")


# ---------------------------------------------------------------- encoder weights


def fake_weights(root: Path, ast_weights: bool = True) -> None:
    clip = root / hub.CLIP_WEIGHTS_SUBDIR / "open_clip_model.safetensors"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"not really weights")
    ast = root / hub.AST_WEIGHTS_SUBDIR
    ast.mkdir(parents=True)
    (ast / "config.json").write_text("{}")
    if ast_weights:
        (ast / "model.safetensors").write_bytes(b"x")


def status_by_name(weights_dir=None) -> dict:
    from mgsv_cli.doctor import checkpoint_status

    return {s.name.split()[0]: s for s in [*hub.models_status(weights_dir), checkpoint_status()]}


def test_nothing_present_in_an_empty_home():
    found = status_by_name()
    assert not found["CLIP"].present and not found["AST"].present
    assert not found["MaDe"].present and "no pretrained MaDe checkpoint is published" in found["MaDe"].detail


def test_weights_dir_is_detected(tmp_path):
    fake_weights(tmp_path / "w")
    found = status_by_name(tmp_path / "w")
    assert found["CLIP"].present and found["CLIP"].source == "weights dir"
    assert found["AST"].present and found["AST"].location == str(tmp_path / "w" / hub.AST_WEIGHTS_SUBDIR)


def test_default_weights_dir_is_detected_and_incomplete_ast_is_not():
    fake_weights(hub.default_weights_dir(), ast_weights=False)
    found = status_by_name()
    assert found["CLIP"].present
    assert not found["AST"].present and "no weights file" in found["AST"].detail


def test_environment_variables_are_detected(tmp_path, monkeypatch):
    fake_weights(tmp_path / "elsewhere")
    clip_file = tmp_path / "elsewhere" / hub.CLIP_WEIGHTS_SUBDIR / "open_clip_model.safetensors"
    monkeypatch.setenv("MGSV_CLIP_WEIGHTS", str(clip_file))
    monkeypatch.setenv("MGSV_AST_WEIGHTS", str(tmp_path / "elsewhere" / hub.AST_WEIGHTS_SUBDIR))
    found = status_by_name()
    assert (found["CLIP"].source, found["CLIP"].location) == ("environment", str(clip_file))
    assert found["AST"].source == "environment"


def fake_hub_cache(cache: Path, repo: str, files: list[str]) -> None:
    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name in files:
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_hub_cache_is_detected(tmp_path):
    cache = tmp_path / "hf-cache"  # HF_HUB_CACHE, set by the fixture
    fake_hub_cache(cache, hub.CLIP_HUB_REPO, ["open_clip_model.safetensors"])
    fake_hub_cache(cache, hub.AST_HUB_REPO, ["config.json", "model.safetensors"])
    found = status_by_name()
    assert found["CLIP"].present and found["CLIP"].source == "hub cache"
    assert found["AST"].present and found["AST"].source == "hub cache"
    # loading asks the very same probe, so what `mgsv models list` shows is what loads
    assert hub.cached_clip_file() == Path(found["CLIP"].location)
    assert hub.cached_ast_weights().parent == Path(found["AST"].location)


def test_loading_and_listing_share_one_cache_probe(tmp_path, monkeypatch):
    from mgsv_cli.features import encoders

    asked = []
    monkeypatch.setattr(hub, "in_hub_cache", lambda repo, files: asked.append(repo))
    status_by_name()
    listed = list(asked)
    asked.clear()
    with pytest.raises(WeightsMissingError):
        encoders.load_encoders("pretrained", device="cpu", offline=True)
    assert set(listed) == set(asked) == {hub.CLIP_HUB_REPO, hub.AST_HUB_REPO}


def test_a_trained_run_counts_as_a_made_checkpoint():
    from mgsv_cli.models.checkpoint import WEIGHTS_NAME
    from mgsv_cli.paths import runs_dir

    run = runs_dir() / "run-1"
    run.mkdir(parents=True)
    (run / WEIGHTS_NAME).write_bytes(b"x")
    assert status_by_name()["MaDe"].present


def test_download_places_weights_where_the_loaders_look(tmp_path, monkeypatch):
    import huggingface_hub

    def fake_file(repo_id, filename, local_dir, token=None):
        assert repo_id == hub.CLIP_HUB_REPO
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"clip")
        return str(path)

    def fake_snapshot(repo_id, local_dir, token=None, allow_patterns=None):
        assert repo_id == hub.AST_HUB_REPO
        folder = Path(local_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"ast")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)  # the (faked) hub answers
    clip, ast = hub.download_models(tmp_path / "carry")
    assert hub.find_clip_weights(tmp_path / "carry") == clip
    assert hub.find_ast_weights(tmp_path / "carry") == ast
    found = status_by_name(tmp_path / "carry")
    assert found["CLIP"].present and found["AST"].present


def test_cli_models_list_json(tmp_path, capsys):
    fake_weights(tmp_path / "w")
    code, out, _ = run_cli(["models", "list", "--weights-dir", str(tmp_path / "w"), "--json"], capsys)
    models = {m["name"].split()[0]: m for m in json.loads(out)["models"]}
    assert code == 0 and models["CLIP"]["present"] and not models["MaDe"]["present"]


# ---------------------------------------------------------------- an unreachable hub fails fast


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Online mode, but the hub's address refuses connections (nothing listens on port 9 here)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")


def test_the_probe_tells_an_answering_hub_from_an_unreachable_one(unreachable_hub, monkeypatch):
    import http.server
    import threading

    assert "cannot reach http://127.0.0.1:9" in hub.hub_unreachable_reason()

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)  # an error status is still an answer: the hub is there
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub.hub_unreachable_reason() is None
    finally:
        server.shutdown()
        server.server_close()


def test_index_without_weights_and_without_the_hub_fails_at_once_in_one_line(unreachable_hub, tmp_path, capsys):
    """The hub client would retry a refused connection for ~30 s (11 lines of "Retrying in 8s"):
    the missing weights are reported from one probe, naming both ways forward."""
    from mgsv_cli.media import synth

    synth.synth_track(tmp_path / "music" / "a.wav", 12.0)
    code, out, err = run_cli(["index", str(tmp_path / "music"), "--index", str(tmp_path / "i.sqlite")], capsys)
    assert code == WeightsMissingError.exit_code == 7, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "cannot reach http://127.0.0.1:9" in err and "Retrying" not in err
    assert "mgsv models download" in err and "--encoders tiny" in err


def test_models_download_without_the_hub_fails_at_once(unreachable_hub, tmp_path, capsys):
    code, _, err = run_cli(["models", "download", "--weights-dir", str(tmp_path / "w")], capsys)
    assert code == 7 and "cannot reach http://127.0.0.1:9" in err and "Retrying" not in err
    assert not (tmp_path / "w").exists()  # nothing made before the hub answered
