"""The public Python API (``mgsv_cli.api``, re-exported lazily by ``mgsv_cli``): its names and
signatures, recorded here so that a change to them is deliberate; the README's script run
on generated media (tiny encoders, a tiny checkpoint); and one path: the CLI and the API
give the same suggestion, render and timeline."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _library_helpers import TRACKS, media_src, run_cli, tiny_encoders  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]

TOP_LEVEL = [
    "__version__",
    "open_library", "Library", "LibraryInfo", "TrackRecord", "FailedFile", "IndexReport", "IndexProgress",
    "load_suggester", "Suggester", "SuggestionResult", "Suggestion",
    "render", "RenderResult", "export", "ExportedTimeline",
    "train", "TrainResult", "Reporter", "evaluate", "load_model", "LoadedModel",
    "MgsvError", "UsageError", "ConfigError", "DataError", "MediaError", "StorageError", "CheckpointError",
    "WeightsMissingError", "IndexDatabaseError", "DeviceMemoryError", "OutputExistsError",
]
REQUEST_FORMS = ["IndexRequest", "run_index", "SuggestRequest", "suggest_videos", "Outcome", "RenderRequest",
                 "render_clip", "render_videos", "RenderOutcome", "ExportRequest", "export_suggestion", "ExportResult"]

# Every public function and method of the API, as ``inspect.signature`` prints it (annotations
# are strings: the module is ``from __future__ import annotations``). Change a line here only
# with the API, on purpose (``fit=`` joins ``Suggester.suggest`` as a keyword with a default).
SIGNATURES = {
    "open_library": "(path: 'PathLike | None' = None, *, create: 'bool' = False, keys: 'str | None' = None) "
                    "-> 'Library'",
    "Library.info": "(self, *, check: 'bool' = False) -> 'LibraryInfo'",
    "Library.tracks": "(self, offset: 'int' = 0, limit: 'int | None' = None) -> 'list[TrackRecord]'",
    "Library.find": "(self, path: 'PathLike') -> 'TrackRecord | None'",
    "Library.failed": "(self, under: 'PathLike | None' = None) -> 'list[FailedFile]'",
    "Library.index": "(self, folder: 'PathLike', *, progress: 'IndexProgress | ProgressFn | None' = None, "
                     "prune: 'bool' = False, force: 'bool' = False, retry_failed: 'bool' = False, "
                     "encoders: 'str | None' = None, device: 'str | None' = None, offline: 'bool' = False, "
                     "weights_dir: 'PathLike | None' = None, detect_beats: 'bool' = True, "
                     "batch_windows: 'int | None' = None, engine: 'str' = 'local', ray_address: 'str | None' = None)"
                     " -> 'IndexReport'",
    "LibraryInfo.to_json": "(self) -> 'dict[str, Any]'",
    "load_suggester": "(library: 'Library | PathLike | None' = None, *, checkpoint: 'PathLike | None' = None, "
                      "untrained: 'bool' = False, encoders: 'str | None' = None, device: 'str | None' = None, "
                      "offline: 'bool' = False, weights_dir: 'PathLike | None' = None, rerank: 'int | None' = None, "
                      "first_stage: 'str' = 'auto', status: 'Callable[[str], None] | None' = None, "
                      "loaded_encoders: 'Any' = None) -> 'Suggester'",
    "Suggester.suggest": "(self, video: 'PathLike', *, top: 'int | None' = None, snap: 'str | None' = None, "
                         "include_short: 'bool' = False, remember: 'bool' = True, fit: 'str | None' = None) "
                         "-> 'SuggestionResult'",
    "Suggester.close": "(self) -> 'None'",
    "render": "(suggestion: 'SuggestionResult | PathLike', out: 'PathLike | None' = None, *, "
              "pick: 'int | None' = None, track: 'PathLike | None' = None, start: 'float | None' = None, "
              "mix: 'str | None' = None, fade_in: 'float | None' = None, fade_out: 'float | None' = None, "
              "loudness: 'float | None' = None, snap: 'str | None' = None, force: 'bool' = False, "
              "library: 'Library | PathLike | None' = None, fit: 'str | None' = None, join: 'float | None' = None) "
              "-> 'RenderResult'",
    "export": "(suggestion: 'SuggestionResult | PathLike', out: 'PathLike | None' = None, *, "
              "format: 'str | None' = None, pick: 'int | None' = None, frame_rate: 'float | None' = None, "
              "snap: 'str | None' = None, start: 'float | None' = None, force: 'bool' = False, "
              "library: 'Library | PathLike | None' = None, fit: 'str | None' = None, join: 'float | None' = None) "
              "-> 'ExportedTimeline'",
    "train": "(data: 'PathLike', *, config: 'str | None' = None, out: 'PathLike | None' = None, "
             "epochs: 'int | None' = None, batch_size: 'int | None' = None, lr: 'float | None' = None, "
             "precision: 'str | None' = None, seed: 'int | None' = None, device: 'str | None' = None, "
             "resume: 'bool' = False, compile: 'bool' = False, stage: 'str' = 'both', "
             "reporter: 'Reporter | None' = None) -> 'TrainResult'",
    "evaluate": "(data: 'PathLike', split: 'str' = 'test', *, checkpoint: 'PathLike | None' = None, "
                "baseline: 'str | None' = None, device: 'str | None' = None, batch_size: 'int' = 256, "
                "progress: 'ProgressFn | None' = None, plots: 'PathLike | None' = None) -> 'dict[str, Any]'",
    "load_model": "(checkpoint: 'PathLike | None' = None, *, device: 'str | None' = None) -> 'LoadedModel'",
    # the request forms: what the CLI, mgsv serve and mgsv mcp call with their own requests
    "run_index": "(request: 'IndexRequest', progress: 'IndexProgress | None' = None) -> 'IndexReport'",
    "suggest_videos": "(videos: 'Sequence[str | os.PathLike]', request, *, status: 'StatusFn | None' = None, "
                      "remember: 'bool' = True, encoders_obj=None) -> 'Iterator[Outcome]'",
    "render_clip": "(video: 'str | os.PathLike', request, record=None) -> 'RenderResult'",
    "render_videos": "(videos, request) -> 'Iterator[RenderOutcome]'",
    "export_suggestion": "(video_path: 'str | os.PathLike', request, *, start: 'float | None' = None, "
                         "out: 'str | os.PathLike | None' = None, force: 'bool | None' = None, "
                         "record: 'SuggestionResult | None' = None)",
}
PROPERTIES = {"Library.backend", "Library.uri", "Suggester.library"}
# The fields of the records the API returns (their JSON is what `mgsv ... --json` prints).
FIELDS = {
    "LibraryInfo": ["uri", "backend", "tracks", "with_beats", "failed", "encoders", "encoder_id", "content_version",
                    "damage"],
    "Suggestion": ["rank", "track", "score", "start", "end", "predicted_start", "predicted_end", "track_duration",
                   "title", "artist", "snapped_to", "fits", "relevance", "edit"],
    "SuggestionResult": ["video", "duration", "suggestions", "checkpoint", "encoders", "untrained", "timings",
                         "left_out_short", "left_out_missing"],
    "ExportedTimeline": ["out", "format", "video", "rank", "track", "start", "end", "snapped_to", "warnings", "edit"],
    "RenderResult": ["out_path", "video", "track", "duration", "start", "end", "requested_start", "mix",
                     "requested_mix", "fade_in", "fade_out", "loudness_target", "loudness", "padded_seconds",
                     "warnings", "edit"],
    "IndexReport": ["index_path", "n_scanned", "added", "updated", "unchanged", "touched", "reused", "pruned",
                    "missing", "beats_added", "structures_added", "n_tracks", "failed", "skipped_failed",
                    "forgotten_failed", "long_tracks", "moved_aside", "interrupted"],
    "LoadedModel": ["model", "variant", "meta"],
}


def test_the_names_are_the_recorded_ones():
    import mgsv_cli
    from mgsv_cli import api

    assert mgsv_cli.__all__ == TOP_LEVEL
    assert api.__all__ == [n for n in TOP_LEVEL if n in api.__all__] + REQUEST_FORMS
    for name in TOP_LEVEL:
        assert getattr(mgsv_cli, name) is not None, name
    for name in api.__all__:
        assert getattr(mgsv_cli, name, None) is getattr(api, name) or name in REQUEST_FORMS, name


def test_the_signatures_are_the_recorded_ones():
    from mgsv_cli import api

    found = {}
    for name in api.__all__:
        obj = getattr(api, name)
        if inspect.isfunction(obj):
            found[name] = str(inspect.signature(obj))
        elif inspect.isclass(obj) and obj.__module__ == api.__name__:
            for member in dir(obj):
                if member.startswith("_"):
                    continue
                value = inspect.getattr_static(obj, member)
                key = f"{name}.{member}"
                if isinstance(value, property):
                    assert key in PROPERTIES, key
                elif inspect.isfunction(value) and key in SIGNATURES:
                    found[key] = str(inspect.signature(value))
    assert found == SIGNATURES
    assert "uri" in vars(api.Library("x.sqlite"))  # Library.uri: a plain attribute


def test_the_records_fields_are_the_recorded_ones():
    from mgsv_cli import api

    for name, fields in FIELDS.items():
        record = getattr(api, name)
        names = list(record._fields) if hasattr(record, "_fields") else [f.name for f in dataclasses.fields(record)]
        assert names == fields, name


def test_errors_are_the_typed_ones_with_their_exit_codes(tmp_path):
    import mgsv_cli as mgsv

    with pytest.raises(mgsv.IndexDatabaseError) as missing:
        mgsv.open_library(tmp_path / "none.sqlite")
    assert missing.value.exit_code == 8 and "none.sqlite" in str(missing.value)
    library = mgsv.open_library(tmp_path / "new.sqlite", create=True)
    with pytest.raises(mgsv.UsageError, match="does not exist"):
        library.index(tmp_path / "no-music")
    with pytest.raises(mgsv.UsageError, match=r"^pick 0: ranks start at 1$"):  # the keyword, not a --flag
        mgsv.render(tmp_path / "clip.mp4", pick=0)
    with pytest.raises(mgsv.UsageError, match="format 'avi'"):
        mgsv.export(tmp_path / "clip.mp4", format="avi")
    with pytest.raises(mgsv.UsageError, match="split 'dev'"):
        mgsv.evaluate(tmp_path, "dev")


# ---------------------------------------------------------------- the README's script


def readme_script() -> str:
    """The Python block of the README's "From Python" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_readme_script_is_ten_lines_of_work():
    lines = [line for line in readme_script().splitlines() if line.strip() and not line.startswith(("import", "from"))]
    assert len(lines) <= 10


def test_the_readme_script_runs(tmp_path, media_src):  # noqa: F811
    """Verbatim, on generated media: HOME is a folder holding Music/ and clips/, the settings say
    tiny encoders and the CPU, and the latest training run is a tiny checkpoint."""
    from mgsv_cli.models.checkpoint import build_untrained, save_checkpoint

    home = tmp_path / "home"
    for rel, *_ in TRACKS:
        (home / "Music" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(media_src / "music" / rel, home / "Music" / rel)
    (home / "clips").mkdir(parents=True)
    for name in ("clip0.mp4", "clip1.mp4"):
        shutil.copy2(media_src / "clips" / name, home / "clips" / name)
    mgsv_home = tmp_path / "mgsv_home"
    model, variant = build_untrained(video_dim=512, music_dim=64, config="tiny")
    save_checkpoint(mgsv_home / "data" / "runs" / "tiny", model, variant, {})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "MGSV_HOME": str(mgsv_home),
           "MGSV_ENCODERS": "tiny", "MGSV_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", readme_script()], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.splitlines()
    assert [line.split(":")[0] for line in printed if line.startswith("clip")] == ["clip0.mp4", "clip1.mp4"]
    assert any(line.startswith("embedding ") for line in printed)
    rendered = sorted(p.name for p in (home / "clips" / "with-music").iterdir())
    assert rendered == ["clip0.mgsv.mp4", "clip1.mgsv.mp4"]


# ---------------------------------------------------------------- one path


def test_the_cli_and_the_api_give_the_same_work(tmp_path, media_src, tiny_encoders, capsys):  # noqa: F811
    """`mgsv suggest --json` and `Suggester.suggest` print the same record; `mgsv export --json` and
    `export` the same timeline; `mgsv render` and `render` the same cut."""
    import mgsv_cli as mgsv

    music = tmp_path / "music"
    for rel, *_ in TRACKS:
        (music / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(media_src / "music" / rel, music / rel)
    clip = Path(shutil.copy2(media_src / "clips" / "clip1.mp4", tmp_path / "clip.mp4"))
    library = mgsv.open_library(tmp_path / "lib.sqlite", create=True)
    stages = []
    report = library.index(music, encoders="tiny", device="cpu", progress=lambda *a: stages.append(a))
    assert report.added == len(TRACKS) and report.ok and {s for s, *_ in stages} >= {"checking", "embedding"}
    info = library.info(check=True)
    assert (info.tracks, info.encoders, info.backend, info.damage) == (len(TRACKS), "tiny", "sqlite", None)
    assert [t.path for t in library.tracks(1, 1)] == [library.tracks()[1].path]

    cli = run_cli(capsys, "suggest", clip, "--index", tmp_path / "lib.sqlite", "--untrained", "--device", "cpu",
                  "--top", "2", "--json", "--no-server")
    assert cli.code == 0, cli.err
    by_cli = json.loads(cli.out)
    with mgsv.load_suggester(library, untrained=True, device="cpu", loaded_encoders=tiny_encoders) as suggester:
        result = suggester.suggest(clip, top=2)
        with pytest.raises(mgsv.UsageError, match="fit"):
            suggester.suggest(clip, fit="stretch")  # refused by the request, named as the keyword
        looped = suggester.suggest(clip, top=1, fit="loop", remember=False)
    by_api = result.to_json()
    assert by_cli.keys() == {"ok", *by_api}
    edit = looped.suggestions[0].edit  # fitted, or fallen back to a cut with the reason
    assert edit is not None and edit.requested == "loop" and (edit.mode != "cut" or edit.reason)
    assert [s["track"] for s in by_cli["suggestions"]] == [s["track"] for s in by_api["suggestions"]]
    for mine, theirs in zip(by_api["suggestions"], by_cli["suggestions"]):
        for key in ("score", "start", "end", "predicted_start", "predicted_end"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-4), key

    exported = mgsv.export(result, tmp_path / "api.otio", format="otio")
    assert exported.out == tmp_path / "api.otio" and exported.out.is_file()
    cli = run_cli(capsys, "export", clip, "--format", "otio", "-o", tmp_path / "cli.otio", "--json", "--no-server")
    assert cli.code == 0, cli.err
    by_cli = json.loads(cli.out)
    assert by_cli.keys() == {"ok", *exported.to_json()}
    assert (by_cli["track"], by_cli["format"], by_cli["rank"]) == (exported.track, "otio", 1)
    assert by_cli["start"] == pytest.approx(exported.start, abs=1e-4)

    rendered = mgsv.render(result, tmp_path / "api.mp4", pick=2)
    cli = run_cli(capsys, "render", clip, "--pick", "2", "-o", tmp_path / "cli.mp4", "--json", "--no-server")
    assert cli.code == 0, cli.err
    by_cli = json.loads(cli.out)
    assert by_cli["track"] == str(rendered.track) == result.suggestions[1].track
    assert by_cli["start"] == pytest.approx(rendered.start, abs=1e-3)
