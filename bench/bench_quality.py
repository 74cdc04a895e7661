"""made vs made-plus per data regime, at equal steps and at a longer budget, choices made on val.

For every data REGIME (a synthetic MGSV-EC dataset, ``mgsv_cli.research.synthetic.make_dataset``)
and every BUDGET (epochs at batch 32), trains every VARIANT with the library
(``mgsv_cli.research.train.train``) for every seed, then reports the test split.

Regimes (``--regimes``; the default is all four, a 2 x 2 grid, with the budgets as the third axis):

- ``shared``: like run 4/5's data (models/README.md), smaller: one music id per train track,
  shared by many videos with a Zipf tail (100 tracks under 1,000 train videos); the link between
  a video and its track is all 16 content dimensions of its section code plus the track style,
  videos straying from the style (style noise 1.5).
- ``shared-weak``: the same ids, a weak link: 4 of the 16 code dimensions carry it, the track
  style at half amplitude (style noise 1.0).
- ``per-pair``: every train video its own track and id (no track is shared or popular), the
  strong link of ``shared``.
- ``per-pair-weak``: per-pair ids and the weak link: the regime of issue 24, where run 5's
  made-plus ranked worse than made.

Budgets (``--budgets``): ``equal`` (6 epochs at batch 32, ~190 steps, every variant the same
steps) and ``long`` (12 epochs): a variant that is behind at ``equal`` and level at ``long`` is
slower, one behind at both is worse.

Variants (``--variants``; all at the tiny widths, d = 64, so the bench runs on two CPU cores):

- ``made``: ``models/tiny.toml``: the paper's architecture and recipe.
- ``made-plus``: ``models/tiny-plus.toml``: tiny + every switch that helped.
- ``made-plus@run5``: made-plus as it was in run 5 (issue 24's starting point): tiny-plus with the
  switches added since (``detect_grad_scale``) at their defaults.
- ``NAME:key=value,key=value``: variant NAME with fields of its ``[model]`` or ``[train]`` table
  changed (``made-plus:detect_grad_scale=0.5``), to compare a switch's settings.
- ``+pointer``, ``+width+pointer``, ``+all`` ...: tiny + the named made-plus switches (run 4's
  ablations); ``real``: ``models/real-tiny.toml`` (ReAL; its epochs apply to each stage).

What chose what (printed with the results):

- **model selection**: the training loop keeps the epoch with the best val selection score
  (the mean of the seven paper numbers on val);
- **the querybank's beta and weight** (made-plus): after training, a grid
  (:data:`QUERYBANK_GRID`) is scored on **val** for every seed of a (regime, budget, variant); the
  setting with the best mean val selection score is kept, then the test split is scored **once**
  per run with it. Weight 0 is in the grid, so the querybank is dropped where val says so;
- **switch settings**: the TOML's; they were chosen on val (models/README.md, run 6, with
  ``--val-only``, which trains and scores val and never touches the test split).

Prints, per regime and budget, the variants' test numbers (mean ± sample std over seeds) and
made-plus vs made on mIoU, R@1, R@5 and MoR@1: the gain in means and whether made-plus is
**ahead** (gain >= 0), **tied** (behind by no more than the larger seed std) or **behind**.
Writes into ``--out``: ``regime-<name>.png`` per regime (the variants' val curves, mean over
seeds and min-max band, one row per budget), ``results.json``; and prints that JSON as the last line.

``--lock FILE`` takes an exclusive ``flock`` on FILE around each training run and evaluation,
so a shared machine's other heavy jobs can run between them.

    # 4 regimes x 2 budgets x 2 variants x 3 seeds:
    .venv/bin/python bench/bench_quality.py --lock /tmp/mgsv-cpu.lock
    .venv/bin/python bench/bench_quality.py --quick                         # smoke size, ~2 min
    .venv/bin/python bench/bench_quality.py --regimes per-pair-weak --budgets equal \\
        --variants made made-plus@run5 made-plus --lock /tmp/mgsv-cpu.lock  # issue 24's conflict, and the fix
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = ("miou", "r1", "r5", "r10", "mor1", "mor10", "mor100")
VERDICT_KEYS = ("miou", "r1", "r5", "mor1")  # made-plus must be at least made's on these, in every regime
CURVE_METRICS = ("r1", "r5", "miou", "mor1")
SWITCHES = {  # name -> (table, field, value): one made-plus switch on top of tiny (run 4's ablations)
    "+positives": ("train", "same_track_positives", True),
    "+multiscale": ("model", "n_music_scales", 3),
    "+width": ("model", "known_width", True),
    "+duration": ("model", "duration_query", True),
    "+pointer": ("model", "start_pointer", True),
    "+sharpness": ("model", "xpool_sharpness", 4.0),
    "+querybank": ("model", "querybank_size", 2048),
}
# Switches added after run 5, set back to their defaults for made-plus@run5.
AFTER_RUN5 = {"train": {"detect_grad_scale": 1.0}}

# 1,000 train videos, 160 val and 160 test videos (each its own candidate track): run 4/5's 1,860 / 240 / 240
# made a 6-epoch run cost ~45 s on two idle cores, and 4 regimes x 2 budgets x 2 variants x 3 seeds did not fit.
_SPLITS = {"n_videos": 1320, "n_val": 160, "n_test": 160}
_WEAK = {"link_dims": 4, "style_scale": 0.5, "style_noise": 1.0}
REGIMES = {
    "shared": ("one id per track, Zipf tail; strong link (16 code dims + style)",
               {**_SPLITS, "n_tracks": 100, "style_noise": 1.5}),
    "shared-weak": ("one id per track, Zipf tail; weak link (4 code dims, style x0.5)",
                    {**_SPLITS, "n_tracks": 100, **_WEAK}),
    "per-pair": ("every train video its own track and id; strong link",
                 {**_SPLITS, "per_pair_ids": True, "style_noise": 1.5}),
    "per-pair-weak": ("every train video its own track and id; weak link (issue 24)",
                      {**_SPLITS, "per_pair_ids": True, **_WEAK}),
}
QUICK_SPLITS = {"n_videos": 300, "n_val": 40, "n_test": 40}
BUDGETS = {"equal": 6, "long": 12}  # epochs at batch 32: ~190 and ~370 steps
QUICK_BUDGETS = {"equal": 1, "long": 2}
DEFAULT_VARIANTS = ["made", "made-plus"]
QUERYBANK_GRID = [(beta, weight) for beta in (5.0, 10.0, 20.0) for weight in (0.0, 0.25, 0.5, 0.75)]


# ----------------------------------------------------------------------------- variants


def with_switches(tiny, switches: list[str], name: str):
    """tiny with the named made-plus switches on."""
    model = {key: value for table, key, value in (SWITCHES[s] for s in switches) if table == "model"}
    train = {key: value for table, key, value in (SWITCHES[s] for s in switches) if table == "train"}
    return dataclasses.replace(tiny, name=name, model=dataclasses.replace(tiny.model, **model),
                               train=dataclasses.replace(tiny.train, **train))


def with_fields(variant, changes: dict, name: str):
    """``variant`` with fields of its model or train config changed (each name looked up in both)."""
    model_fields = {f.name for f in dataclasses.fields(variant.model)}
    train_fields = {f.name for f in dataclasses.fields(variant.train)}
    unknown = set(changes) - model_fields - train_fields
    if unknown:
        raise SystemExit(f"unknown field(s) {', '.join(sorted(unknown))} for {variant.name}")
    return dataclasses.replace(
        variant, name=name,
        model=dataclasses.replace(variant.model, **{k: v for k, v in changes.items() if k in model_fields}),
        train=dataclasses.replace(variant.train, **{k: v for k, v in changes.items() if k in train_fields}))


def _parse_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def variants(names: list[str]):
    """(name, VariantConfig or None, note) for each asked variant (module docstring)."""
    from mgsv_cli.errors import ConfigError
    from mgsv_cli.models.variants import load_config

    tiny = load_config("tiny")
    out = []
    for name in names:
        base, _, overrides = name.partition(":")
        if base == "made":
            variant = dataclasses.replace(tiny, name="tiny")
        elif base == "made-plus":
            variant = load_config("tiny-plus")
        elif base == "made-plus@run5":
            variant = with_fields(load_config("tiny-plus"), {k: v for table in AFTER_RUN5.values() for k, v in
                                                             table.items()}, "tiny-plus@run5")
        elif base == "+all":  # every switch on, helpful or not
            variant = with_switches(tiny, list(SWITCHES), "tiny+all")
        elif base.startswith("+"):
            switches = ["+" + part for part in base[1:].split("+")]
            unknown = [s for s in switches if s not in SWITCHES]
            if unknown:
                raise SystemExit(f"unknown switch {unknown[0]!r} (known: {', '.join(SWITCHES)})")
            variant = with_switches(tiny, switches, f"tiny{base}")
        elif base == "real":
            try:
                variant = load_config("real-tiny")
            except ConfigError as exc:
                out.append((name, None, f"skipped: {exc}"))
                continue
        else:
            raise SystemExit(f"unknown variant {name!r}")
        if overrides:
            changes = dict(part.split("=", 1) for part in overrides.split(","))
            parsed = {k: _parse_value(v) for k, v in changes.items()}
            variant = with_fields(variant, parsed, f"{variant.name}:{overrides}")
        out.append((name, variant, ""))
    return out


def recipe_key(variant) -> str:
    """What training depends on (the name aside): two variants with one key train identically."""
    return json.dumps([dataclasses.asdict(variant.model), dataclasses.asdict(variant.train)], sort_keys=True,
                      default=str)


# ----------------------------------------------------------------------------- runs


@contextlib.contextmanager
def cpu_lock(path: str | None):
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def train_one(root: Path, variant, seed: int, epochs: int, run_dir: Path, lock: str | None) -> dict:
    """Train one seed (best-on-val weights kept in ``run_dir``); returns its val history."""
    from mgsv_cli.models.variants import replace_train
    from mgsv_cli.research.train import train

    variant = replace_train(variant, epochs=epochs, seed=seed, batch_size=32)
    with cpu_lock(lock):
        start = time.perf_counter()
        result = train(root, variant, out_dir=run_dir, device="cpu")
        seconds = time.perf_counter() - start
    best = result.best_metrics
    return {"seed": seed, "train_s": round(seconds, 1), "best_epoch": best.get("epoch"),
            "val_score": round(float(best["score"]), 3), "val": {k: float(best[k]) for k in METRICS},
            "curves": {k: [float(r[k]) for r in result.history if k in r] for k in CURVE_METRICS}}


def load_with(run_dir: Path, **changes):
    """The run's best-on-val model, with ``changes`` to its model config (the querybank's beta and
    weight act at scoring time only, so they can change after training)."""
    from mgsv_cli.models.checkpoint import load_model

    model, _variant, _meta = load_model(run_dir)
    if changes and hasattr(model, "cfg"):
        model.cfg = dataclasses.replace(model.cfg, **changes)
    return model


def score(model, split) -> dict:
    from mgsv_cli.research.evaluation import evaluate_model
    from mgsv_cli.research.runs import selection_score

    metrics = evaluate_model(model, split, "cpu")
    return {**{k: float(metrics[k]) for k in METRICS}, "score": selection_score(metrics)}


def choose_querybank(run_dirs: list[Path], val_split, lock: str | None) -> dict:
    """The querybank (beta, weight) with the best mean val selection score over the runs (val only)."""
    scores: dict[str, list[float]] = {}
    with cpu_lock(lock):
        for run_dir in run_dirs:
            model = load_with(run_dir)
            trained_with = model.cfg
            for beta, weight in QUERYBANK_GRID:
                model.cfg = dataclasses.replace(trained_with, querybank_beta=beta, querybank_weight=weight)
                scores.setdefault(f"{beta:g}/{weight:g}", []).append(score(model, val_split)["score"])
    grid = {key: statistics.fmean(values) for key, values in scores.items()}
    best = max(grid, key=lambda key: (grid[key], key))
    beta, weight = (float(x) for x in best.split("/"))
    return {"beta": beta, "weight": weight, "val_score": grid[best], "grid_val_scores": grid, "chosen_on": "val"}


def run_variant(root: Path, variant, seeds: list[int], epochs: int, work: Path, val_split, test_split,
                lock: str | None, val_only: bool, log) -> dict:
    """Every seed of one variant: train, choose the querybank on val, then score test once."""
    runs, run_dirs = [], []
    for seed in seeds:
        run_dir = work / f"{variant.name}-e{epochs}-seed{seed}"
        runs.append(train_one(root, variant, seed, epochs, run_dir, lock))
        run_dirs.append(run_dir)
        val = runs[-1]["val"]
        log(f"{variant.name} seed {seed}: kept epoch {runs[-1]['best_epoch']}: val score {runs[-1]['val_score']}, "
            f"R@1 {val['r1']:.1f}, R@5 {val['r5']:.1f}, mIoU {val['miou']:.3f}, MoR@1 {val['mor1']:.1f}; "
            f"{runs[-1]['train_s']} s")
    has_querybank = getattr(variant.model, "querybank_size", 0) > 0
    querybank = choose_querybank(run_dirs, val_split, lock) if has_querybank else None
    if querybank:
        log(f"{variant.name}: querybank beta {querybank['beta']:g}, weight {querybank['weight']:g} chosen on val "
            f"(mean val score {querybank['val_score']:.2f})")
    changes = {"querybank_beta": querybank["beta"], "querybank_weight": querybank["weight"]} if querybank else {}
    for run, run_dir in zip(runs, run_dirs):
        split = val_split if val_only else test_split
        with cpu_lock(lock):
            run["test" if not val_only else "val_chosen"] = score(load_with(run_dir, **changes), split)
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"runs": runs, "querybank": querybank, "params": _params(variant),
            "stats": summary([r["test" if not val_only else "val_chosen"] for r in runs])}


def _params(variant) -> int:
    from mgsv_cli.models.checkpoint import build_network

    return int(build_network(variant).parameter_counts()["total"])


def summary(results: list[dict]) -> dict:
    out = {}
    for key in METRICS + ("score",):
        values = [r[key] for r in results]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}
    return out


def verdict(base: dict, plus: dict) -> dict:
    """made-plus vs made per key: gain in means; ahead (>= 0), tied (behind by at most the larger
    seed std) or behind; and in how many seeds made-plus is at least made's run of the same seed."""
    out = {}
    base_runs = {r["seed"]: r for r in base["runs"]}
    which = "test" if "test" in base["runs"][0] else "val_chosen"
    for key in VERDICT_KEYS:
        b, p = base["stats"][key], plus["stats"][key]
        gain = p["mean"] - b["mean"]
        spread = max(b["std"], p["std"])
        paired = [r[which][key] - base_runs[r["seed"]][which][key] for r in plus["runs"] if r["seed"] in base_runs]
        out[key] = {"gain": gain, "spread": spread,
                    "status": "ahead" if gain >= 0 else ("tied" if -gain <= spread else "behind"),
                    "seeds_not_behind": sum(g >= 0 for g in paired), "seeds": len(paired)}
    return out


# ----------------------------------------------------------------------------- report


def fmt(stats: dict, key: str) -> str:
    s = stats[key]
    if key == "miou":
        return f"{s['mean']:.3f}±{s['std']:.3f}"
    return f"{s['mean']:5.1f}±{s['std']:4.1f}"


def print_table(regime: str, budget: str, epochs: int, results: dict, split: str) -> None:
    print(f"\n{regime}, {budget} budget ({epochs} epochs at batch 32): {split} split, mean ± sample std over seeds "
          "(mIoU a fraction, the rest %; val = selection score of the kept epoch; qb = querybank beta/weight "
          "chosen on val)")
    header = f"{'variant':<22} {'params':>8} {'mIoU':>12} " + " ".join(f"{k.upper():>10}" for k in METRICS[1:]) \
        + f" {'val':>10}  qb"
    print(header.replace("MOR", "MoR").replace("R1", "R@1").replace("R5", "R@5").replace("R10", "R@10"))
    for name, res in results.items():
        stats = res["stats"]
        val = statistics.fmean(r["val_score"] for r in res["runs"])
        qb = res["querybank"]
        cells = " ".join(f"{fmt(stats, k):>10}" for k in METRICS[1:])
        print(f"{name:<22} {res['params']:>8,} {fmt(stats, 'miou'):>12} {cells} {val:>10.1f}  "
              + (f"{qb['beta']:g}/{qb['weight']:g}" if qb else "-"))


def draw_regime(out: Path, regime: str, description: str, by_budget: dict, budgets: dict) -> Path:
    from mgsv_cli.research.curves import plot_comparison

    curves = {f"{budget} ({budgets[budget]} ep)": {name: {k: [r["curves"][k] for r in res["runs"]]
                                                         for k in CURVE_METRICS}
                                                  for name, res in results.items()}
              for budget, results in by_budget.items()}
    return plot_comparison(curves, out / f"regime-{regime}.png", f"{regime}: {description} (val curves)",
                           CURVE_METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: small data, 1 and 2 epochs, 1 seed")
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--epochs", type=int, nargs="+", default=None,
                        help="epochs of each asked budget, in order (default: equal 6, long 18)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                        help="made, made-plus, made-plus@run5, NAME:key=value,..., +switch..., +all, real")
    parser.add_argument("--val-only", action="store_true",
                        help="never score the test split: report val (for choosing a switch's setting)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mgsv-bench-quality",
                        help="where the per-regime PNGs and results.json go")
    parser.add_argument("--lock", default=None, help="flock this file around each training run and evaluation")
    args = parser.parse_args()

    import torch

    from mgsv_cli.research.dataset import load_split
    from mgsv_cli.research.synthetic import make_dataset

    budgets = dict(QUICK_BUDGETS if args.quick else BUDGETS)
    budgets = {b: budgets[b] for b in args.budgets}
    if args.epochs:
        if len(args.epochs) != len(budgets):
            raise SystemExit(f"--epochs: give one number per budget ({', '.join(budgets)})")
        budgets = dict(zip(budgets, args.epochs))
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    chosen = variants(args.variants)
    args.out.mkdir(parents=True, exist_ok=True)
    split_name = "val" if args.val_only else "test"
    started = time.perf_counter()
    print(f"# torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; "
          f"regimes {args.regimes}; budgets {budgets}; seeds {seeds}; variants {[n for n, _, _ in chosen]}; "
          f"reported split: {split_name}", flush=True)
    print("# chosen on val: the kept epoch of every run, the querybank's beta/weight (grid "
          f"{sorted({b for b, _ in QUERYBANK_GRID})} x {sorted({w for _, w in QUERYBANK_GRID})}), the switches "
          f"(the TOMLs); the {split_name} split is scored once per run, after those choices", flush=True)

    def log(message: str) -> None:
        print(f"# [{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    report: dict = {"bench": "quality", "split": split_name, "budgets": budgets, "seeds": seeds, "regimes": {},
                    "notes": {}}
    for regime in args.regimes:
        description, size = REGIMES[regime]
        if args.quick:
            size = {**size, **QUICK_SPLITS, **({"n_tracks": 30} if "n_tracks" in size else {})}
        by_budget: dict = {}
        with tempfile.TemporaryDirectory(prefix=f"mgsv-bench-quality-{regime}-") as tmp:
            work = Path(tmp)
            info = make_dataset(work / "data", seed=args.data_seed, **size)
            train_ids = info.split_track_ids("train")
            shared = len(set(info.split_track_ids("test")) & set(train_ids))
            log(f"regime {regime} ({description}): {info.sizes}, {len(train_ids)} train tracks; "
                f"{shared} of {info.n('test')} test tracks are train tracks")
            val_split, test_split = load_split(work / "data", "val"), load_split(work / "data", "test")
            for budget, epochs in budgets.items():
                results, trained = {}, {}
                for name, variant, note in chosen:
                    if variant is None:
                        report["notes"][name] = note
                        continue
                    same = trained.get(recipe_key(variant))
                    if same is not None:  # one recipe under two names (made-plus@run5 before a switch is on)
                        results[name] = {**results[same], "same_as": same}
                        log(f"{name}: the same recipe as {same}, its runs")
                        continue
                    trained[recipe_key(variant)] = name
                    try:
                        results[name] = run_variant(work / "data", variant, seeds, epochs, work / "runs", val_split,
                                                    test_split, args.lock, args.val_only, log)
                    except Exception as exc:  # a family still being written must not sink the others
                        report["notes"][name] = f"skipped: {type(exc).__name__}: {exc}"
                        log(f"{name}: {report['notes'][name]}")
                by_budget[budget] = results
                print_table(regime, budget, epochs, results, split_name)
                if "made" in results:
                    for name in results:
                        if name.startswith("made-plus"):
                            v = verdict(results["made"], results[name])
                            results[name]["verdict_vs_made"] = v
                            print(f"{name} vs made: " + ", ".join(
                                f"{k} {'+' if x['gain'] >= 0 else ''}{x['gain']:.3f} {x['status']} "
                                f"(spread {x['spread']:.3f}; not behind in {x['seeds_not_behind']}/{x['seeds']} seeds)"
                                for k, x in v.items()), flush=True)
        picture = draw_regime(args.out, regime, description, by_budget, budgets)
        log(f"val curves of {regime}: {picture}")
        report["regimes"][regime] = {"description": description, "data": size, "budgets": by_budget}
        (args.out / "results.json").write_text(json.dumps(report))  # after every regime: a long run's partial results
    report["wall_s"] = round(time.perf_counter() - started, 1)
    (args.out / "results.json").write_text(json.dumps(report))
    log(f"done; results in {args.out / 'results.json'}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
