"""bench/bench_quality.py's bookkeeping (no training): variants by name, the verdict, the regimes' data."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_by_name_and_field_overrides(bench):
    from mgsv_cli.models.variants import load_config

    found = {name: variant for name, variant, _ in bench.variants(
        ["made", "made-plus", "made-plus@run5", "made-plus:detect_grad_scale=0.25,start_pointer=false", "+pointer"])}
    assert found["made"].model == load_config("tiny").model
    assert found["made-plus"].model == load_config("tiny-plus").model
    changed = found["made-plus:detect_grad_scale=0.25,start_pointer=false"]
    assert changed.train.detect_grad_scale == 0.25 and changed.model.start_pointer is False
    assert changed.model.known_width is True  # the rest is made-plus's
    assert found["made-plus@run5"].train.detect_grad_scale == 1.0
    assert found["+pointer"].model == dataclasses.replace(load_config("tiny").model, start_pointer=True)
    with pytest.raises(SystemExit, match="unknown field"):
        bench.variants(["made:no_such_field=1"])


def test_one_recipe_under_two_names_is_trained_once(bench):
    (_, plus, _), (_, run5, _) = bench.variants(["made-plus", "made-plus@run5"])
    # made-plus keeps detect_grad_scale at 1 (chosen on val), so run 5's recipe is made-plus's
    assert bench.recipe_key(plus) == bench.recipe_key(run5)
    (_, other, _), = bench.variants(["made-plus:detect_grad_scale=0.5"])
    assert bench.recipe_key(other) != bench.recipe_key(plus)


def _runs(values: dict[str, list[float]]) -> dict:
    runs = [{"seed": seed, "test": {k: v[seed] for k, v in values.items()}} for seed in range(3)]
    return {"runs": runs, "stats": bench_summary([r["test"] for r in runs], values)}


def bench_summary(results, values):
    import statistics

    return {k: {"mean": statistics.fmean(v), "std": statistics.stdev(v)} for k, v in values.items()}


def test_verdict_ahead_tied_behind(bench):
    base = _runs({"miou": [0.30, 0.32, 0.31], "r1": [40.0, 42.0, 44.0], "r5": [70.0, 70.0, 70.0],
                  "mor1": [10.0, 11.0, 12.0]})
    plus = _runs({"miou": [0.60, 0.62, 0.61], "r1": [41.0, 41.0, 42.0], "r5": [60.0, 61.0, 62.0],
                  "mor1": [10.0, 11.0, 12.0]})
    verdict = bench.verdict(base, plus)
    assert verdict["miou"]["status"] == "ahead" and verdict["miou"]["seeds_not_behind"] == 3
    assert verdict["r1"]["status"] == "tied"  # -0.67, within made's std of 2
    assert verdict["r1"]["seeds_not_behind"] == 1
    assert verdict["r5"]["status"] == "behind"  # -9, beyond either std
    assert verdict["mor1"]["status"] == "ahead" and verdict["mor1"]["gain"] == 0


def test_regimes_span_ids_and_link_strength(bench):
    regimes = bench.REGIMES
    assert set(regimes) == {"shared", "shared-weak", "per-pair", "per-pair-weak"}
    per_pair = {name for name, (_, size) in regimes.items() if size.get("per_pair_ids")}
    weak = {name for name, (_, size) in regimes.items() if size.get("link_dims", 16) < 16}
    assert per_pair == {"per-pair", "per-pair-weak"} and weak == {"shared-weak", "per-pair-weak"}
    assert bench.BUDGETS["long"] > bench.BUDGETS["equal"]
    assert (0.0 in {w for _, w in bench.QUERYBANK_GRID})  # val may drop the querybank
