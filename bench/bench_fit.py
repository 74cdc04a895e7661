"""--fit cut | ending | loop on music of known structure: how exact, how smooth, how it ends.

Generated songs with a real ending (``synth.music_samples(..., ending=True)``: bars, sections and
the final downbeat known from ``song_plan``), and any real recordings given with ``--music DIR``.
For each mode, the music is made by render's own filter graph (``render.edit_chain`` through
ffmpeg, 48 kHz) and measured:

- length error: samples made minus the clip's samples;
- beat-phase error at each join (ms): the interval from the last beat before the join to the
  first after it, against the beat period (true beats for generated songs, detected for real ones);
- spectral / loudness step at each join (log-mel frame distance, RMS dB difference, the largest
  within two frames of the cut) as a percentile of the same step between every two consecutive
  frames of the track itself: a good join is no rougher than the track; and as a percentile of
  the same largest step in the same window around each of the track's own bar lines (true bars
  for generated songs, detected ones for real recordings): the window around a join holds the
  incoming downbeat's attack, which the frame-to-frame population ranks among a track's largest
  steps, so this second reading says whether the join is rougher than the track's own bar
  changes (50: like a typical one);
- whether the music ends on the track's last downbeat (it plays it and stops where the sound does).

    python bench/bench_fit.py [--music DIR] [--out test-artifacts/fit]

Prints numbers; asserts nothing. Keeps before/after WAVs (cut vs ending/loop) in ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 48000
SONGS = [(95.0, 100.0, 2), (130.0, 128.0, 3), (75.0, 90.0, 4)]  # seconds, bpm, seed
CLIPS = [12.0, 23.9, 40.0]  # MGSV-EC's clips average 23.9 s


def make_music(track: Path, edit, seconds: float, fade_in: float = 0.5) -> np.ndarray:
    """The music render lays under a clip of ``seconds`` for ``edit``, as mono float32 at 48 kHz."""
    from mgsv_cli.editor import render as rendering
    from mgsv_cli.media.ffmpeg import run_ffmpeg

    graph = rendering.edit_chain(edit, "0:a:0", seconds, fade_in) + ",pan=mono|c0=0.5*c0+0.5*c1[out]"
    proc = run_ffmpeg(["-nostats", "-loglevel", "error", *rendering.edit_input_args(edit, track),
                       "-filter_complex", graph, "-map", "[out]", "-f", "f32le", "-"], "bench music")
    return np.frombuffer(proc.stdout, dtype=np.float32)


def cut_edit(start: float, seconds: float, track_seconds: float):
    """Today's cut as an edit list (one span, 1 s fade-out), placed as render places it."""
    from mgsv_cli.editor.editlist import EditList, Span
    from mgsv_cli.editor.render import fit_cut

    cut = fit_cut(start, seconds, track_seconds)
    return EditList(mode="ending", requested="cut", spans=(Span(cut.start, cut.start + cut.seconds),),
                    length=seconds, fade_out=1.0), cut


def steps(audio: np.ndarray):
    """Per frame-to-frame: (log-mel distance, RMS dB difference), frames of 2048 every 512."""
    import librosa

    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=audio, sr=RATE, n_fft=2048, hop_length=512,
                                                             n_mels=64), ref=1.0, top_db=80)
    level = 20 * np.log10(np.maximum(librosa.feature.rms(y=audio, frame_length=2048, hop_length=512)[0], 1e-5))
    return np.linalg.norm(np.diff(mel, axis=1), axis=0), np.abs(np.diff(level))


def percentile_of(value: float, population: np.ndarray) -> float:
    return 100.0 * float(np.mean(population <= value))


JOIN_WINDOW = (3, 2)  # frames before / after the frame of a cut whose largest step is measured


def _window_max(values: np.ndarray, frame: int) -> float:
    return float(values[max(0, frame - JOIN_WINDOW[0]):frame + JOIN_WINDOW[1]].max())


def bar_line_steps(track_spec, track_level, bars) -> tuple[np.ndarray, np.ndarray]:
    """The largest step in a join's window placed as a join's cut would be at each bar line of
    the track (``JOIN_LEAD_SECONDS`` before it): the track's own bar changes, to rank joins by."""
    from mgsv_cli.editor.fitting import JOIN_LEAD_SECONDS

    frames = [int(round((b - JOIN_LEAD_SECONDS) * RATE / 512)) for b in bars]
    frames = [f for f in frames if JOIN_WINDOW[0] <= f < len(track_spec) - JOIN_WINDOW[1]]
    return (np.array([_window_max(track_spec, f) for f in frames]),
            np.array([_window_max(track_level, f) for f in frames]))


def measure(track_audio, music, edit, beats, last_downbeat, end, seconds, bars=()):
    """The row of numbers for one made edit."""
    track_spec, track_level = steps(track_audio)
    bar_spec, bar_level = bar_line_steps(track_spec, track_level, bars)
    out_spec, out_level = steps(music)
    row = {"length_err": len(music) - round(seconds * RATE), "phase_ms": [], "spec_pct": [], "loud_pct": [],
           "spec_bar_pct": [], "loud_bar_pct": []}
    period = float(np.median(np.diff(beats)))
    for join in edit.joins:
        before = [b for b in beats if b <= join.out + 1e-3]
        after = [b for b in beats if b >= join.into - 1e-3]
        if before and after:
            gap = (join.out - before[-1]) + (after[0] - join.into)
            error = (gap + period / 2) % period - period / 2
            row["phase_ms"].append(1000 * abs(error))
        frame = int(round(join.at * RATE / 512))
        spec, level = _window_max(out_spec, frame), _window_max(out_level, frame)
        row["spec_pct"].append(percentile_of(spec, track_spec))
        row["loud_pct"].append(percentile_of(level, track_level))
        if len(bar_spec):
            row["spec_bar_pct"].append(percentile_of(spec, bar_spec))
            row["loud_bar_pct"].append(percentile_of(level, bar_level))
    last = edit.spans[-1]
    row["ends_on_last_downbeat"] = bool(last.start <= last_downbeat + 1e-3 and last.end >= last_downbeat + 0.4
                                        and abs(last.end - end) < 1.0 + 1e-6 and edit.fade_out < 1.0)
    return row


def run_song(name, track: Path, beats, last_downbeat, out_dir: Path | None, rows: list, bars=None) -> None:
    from mgsv_cli.editor.fitting import plan_edit
    from mgsv_cli.media.ffmpeg import read_audio_mono
    from mgsv_cli.media.structure import structure_of_file

    t0 = time.perf_counter()
    structure = structure_of_file(track)
    analysis = time.perf_counter() - t0
    audio = read_audio_mono(track, sample_rate=RATE)
    duration = len(audio) / RATE
    rng = np.random.default_rng(len(name))
    cases = [(clip, float(rng.uniform(0.1, 0.5)) * max(0.0, duration - clip), mode)
             for clip in CLIPS if clip < duration for mode in ("cut", "ending", "loop")]
    loop_clip = round(1.5 * duration, 1)
    cases += [(loop_clip, 0.0, "cut"), (loop_clip, 0.0, "loop")]
    for clip, start, mode in cases:
        edit = plan_edit(mode, structure, start, clip) if mode != "cut" else None
        made = edit if edit is not None and edit.spliced else None
        if made is None:  # cut, asked for or fallen back to: made as render makes a cut
            made, cut = cut_edit(start, clip, duration)
            if cut.padded:  # a short track: render plays it whole, then silence
                made = type(made)(mode="ending", requested="cut", spans=made.spans, length=cut.seconds, fade_out=1.0)
            edit = edit or made
        music = make_music(track, made, made.length)
        if made.length < clip:
            music = np.concatenate([music, np.zeros(round((clip - made.length) * RATE), np.float32)])
        row = measure(audio, music, made, beats, last_downbeat, structure.end, clip,
                      bars=structure.bars if bars is None else bars)
        row.update(song=name, mode=mode, made=edit.mode if mode != "cut" else "cut", clip=clip,
                   joins=len(made.joins), reason=edit.reason, analysis_s=analysis)
        rows.append(row)
        if out_dir is not None and clip == CLIPS[1] or (out_dir is not None and clip == loop_clip):
            import soundfile

            out_dir.mkdir(parents=True, exist_ok=True)
            soundfile.write(out_dir / f"{name}-{clip:g}s-{mode}.wav", music, RATE, subtype="PCM_16")


def report(rows: list) -> None:
    print(f"{'song':<14} {'mode':<7} {'made':<7} {'clip s':>6} {'joins':>5} {'len err':>7} {'phase ms':>9} "
          f"{'spec pct':>9} {'loud pct':>9} {'spec/bars':>9} {'loud/bars':>9} {'ends':>5}  reason")
    for r in rows:
        def worst(key, fmt):
            return fmt.format(max(r[key])) if r[key] else "-"

        print(f"{r['song']:<14} {r['mode']:<7} {r['made']:<7} {r['clip']:>6.1f} {r['joins']:>5} {r['length_err']:>7} "
              f"{worst('phase_ms', '{:.1f}'):>9} {worst('spec_pct', '{:.0f}'):>9} {worst('loud_pct', '{:.0f}'):>9} "
              f"{worst('spec_bar_pct', '{:.0f}'):>9} {worst('loud_bar_pct', '{:.0f}'):>9} "
              f"{'yes' if r['ends_on_last_downbeat'] else 'no':>5}  {r['reason'] or ''}")
    print()
    print(f"{'mode':<7} {'cases':>5} {'joins':>5} {'max |len err|':>13} {'phase ms med/max':>17} "
          f"{'spec pct med/max':>17} {'loud pct med/max':>17} {'spec/bars med/max':>18} {'loud/bars med/max':>18} "
          f"{'ends on last downbeat':>22} {'fell back':>9}")
    for mode in ("cut", "ending", "loop"):
        chosen = [r for r in rows if r["mode"] == mode]
        if not chosen:
            continue
        phase = [v for r in chosen for v in r["phase_ms"]]
        spec = [v for r in chosen for v in r["spec_pct"]]
        loud = [v for r in chosen for v in r["loud_pct"]]
        spec_bars = [v for r in chosen for v in r["spec_bar_pct"]]
        loud_bars = [v for r in chosen for v in r["loud_bar_pct"]]

        def pair(values, fmt):
            return f"{fmt.format(np.median(values))}/{fmt.format(max(values))}" if values else "-"

        print(f"{mode:<7} {len(chosen):>5} {len(phase) and sum(r['joins'] for r in chosen):>5} "
              f"{max(abs(r['length_err']) for r in chosen):>13} {pair(phase, '{:.1f}'):>17} {pair(spec, '{:.0f}'):>17} "
              f"{pair(loud, '{:.0f}'):>17} {pair(spec_bars, '{:.0f}'):>18} {pair(loud_bars, '{:.0f}'):>18} "
              f"{sum(r['ends_on_last_downbeat'] for r in chosen):>15}/{len(chosen):<6} "
              f"{sum(1 for r in chosen if r['reason']):>9}")
    print(f"structure analysis per track (decode excluded): "
          f"{np.mean([r['analysis_s'] for r in rows]):.2f} s on average")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--music", type=Path, help="a folder of real recordings to measure too")
    parser.add_argument("--out", type=Path, default=Path("test-artifacts/fit"), help="where the WAVs go")
    args = parser.parse_args(argv)
    from mgsv_cli.media import synth

    rows: list = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds, bpm, seed in SONGS:
            plan = synth.song_plan(seconds, bpm, ending=True)
            track = synth.synth_track(Path(tmp) / f"song{seed}.flac", seconds=seconds, bpm=bpm, seed=seed, ending=True)
            run_song(f"synth{seed}-{bpm:g}", track, plan.beats, plan.last_downbeat, args.out, rows, bars=plan.bars)
    real = sorted(p for p in args.music.rglob("*") if p.suffix.lower() in (".mp3", ".flac", ".wav", ".m4a", ".ogg")) \
        if args.music else []
    for path in real:
        from mgsv_cli.media.beats import beats_of_file
        from mgsv_cli.media.structure import structure_of_file

        grid, structure = beats_of_file(path), structure_of_file(path)
        run_song(path.stem[:14], path, grid.beats or [0.0, 1.0], structure.last_downbeat or 0.0, args.out, rows)
    if not real:
        print("real recordings: none given (--music DIR); generated songs only", file=sys.stderr)
    report(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
