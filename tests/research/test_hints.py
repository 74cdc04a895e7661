"""Research commands give hints that exist for them (eval has no --untrained)."""
from __future__ import annotations

from _datagen import make_dataset

from mgsv_cli.cli import main
from mgsv_cli.errors import CheckpointError


def test_eval_without_a_checkpoint_offers_only_what_eval_has(capsys, tmp_path):
    root = make_dataset(tmp_path / "ds", n_tracks=6, n_train=24, n_val=12, n_test=12, seed=1).root
    try:
        main(["eval", "--data", str(root), "--split", "test", "--device", "cpu"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == CheckpointError.exit_code
    assert "mgsv train" in err and "--checkpoint" in err
    assert "--untrained" not in err  # eval has no such option
