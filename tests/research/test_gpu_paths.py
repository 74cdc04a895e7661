"""The CUDA code paths, run on the CPU: no test here needs (or uses) a GPU.

- device errors: ``--device cuda`` without CUDA (no CUDA build / no GPU visible),
  ``cuda:N`` past the last GPU, ``mps`` without MPS: one line each, from the CLI too;
- CUDA out-of-memory in train / eval / index: a one-line error naming the option that
  lowers the batch (raised from patched functions);
- the device-resident split (what training uses on a GPU), forced onto the CPU: the same
  batches as the memory-mapped path, bit for bit, and the same training run;
- fused Adam (what CUDA gets) resumes exactly; ``--compile`` reaches ``torch.compile``;
- the choices a GPU gets: bf16 autocast, fp16 CLIP, bf16 AST, batch sizes from free memory,
  more audio workers, the overlapped AST pipeline (forced on the CPU, same features).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _library_helpers import json_close, run
from safetensors.torch import load_file

from mgsv_cli import device as D
from mgsv_cli.errors import UsageError
from mgsv_cli.features import encoders as F
from mgsv_cli.features import recipe as R
from mgsv_cli.models.variants import load_config, replace_train
from mgsv_cli.research import train as T
from mgsv_cli.research.dataset import DeviceSplit, load_split, place_split
from mgsv_cli.research.evaluation import evaluate_model


def tiny(epochs: int = 1):
    return replace_train(load_config("tiny"), epochs=epochs, batch_size=32)


# ----------------------------------------------------------------------------- device errors


def fake_cuda(monkeypatch, built=True, available=True, count=1):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: built)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cuda_without_a_cuda_build_says_so(monkeypatch):
    fake_cuda(monkeypatch, built=False, available=False, count=0)
    with pytest.raises(UsageError, match="this torch build .* has no CUDA support") as info:
        D.resolve_device("cuda")
    assert "--device cpu" in str(info.value) and "\n" not in str(info.value)


def test_cuda_build_without_a_visible_gpu_says_so(monkeypatch):
    fake_cuda(monkeypatch, built=True, available=False, count=0)
    with pytest.raises(UsageError, match="sees no GPU") as info:
        D.resolve_device("cuda:0")
    assert "no CUDA support" not in str(info.value)


def test_cuda_index_past_the_last_gpu(monkeypatch):
    fake_cuda(monkeypatch, count=2)
    with pytest.raises(UsageError, match=r"--device cuda:3: only 2 CUDA GPU\(s\) are visible \(cuda:0 to cuda:1\)"):
        D.resolve_device("cuda:3")
    assert D.resolve_device("cuda:1") == torch.device("cuda:1")
    assert D.resolve_device("auto").type == "cuda"  # auto takes the GPU when there is one


def test_mps_errors_distinguish_build_from_machine(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UsageError, match="no Apple MPS support"):
        D.resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    with pytest.raises(UsageError, match="not available on this machine"):
        D.resolve_device("mps")


@pytest.mark.parametrize("command", ["train", "eval"])
def test_cli_device_errors_are_one_line(monkeypatch, capsys, dataset, command):
    fake_cuda(monkeypatch, count=2)
    code, _, err = run(capsys, command, "--data", str(dataset.root), "--device", "cuda:3")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "only 2 CUDA GPU(s)" in err


def test_index_device_error_is_one_line(monkeypatch, capsys, tmp_path):
    from mgsv_cli.media import synth

    synth.synth_tone(tmp_path / "music" / "a.wav", seconds=3.0)
    fake_cuda(monkeypatch, built=False, available=False, count=0)
    code, _, err = run(capsys, "index", str(tmp_path / "music"), "--index", str(tmp_path / "i.sqlite"),
                       "--encoders", "tiny", "--device", "cuda", "--no-beats")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no CUDA support" in err


# ----------------------------------------------------------------------------- out of memory


def raise_oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.3 GiB total)\n"
                                      "more lines of allocator detail")


def test_out_of_memory_hint_turns_only_oom_into_one_line():
    with pytest.raises(D.DeviceMemoryError) as info:
        with D.out_of_memory_hint("training", "--batch-size", 512, "cuda:0"):
            raise_oom()
    message = str(info.value)
    assert message == ("out of GPU memory on cuda:0 while training at --batch-size 512: "
                       "lower --batch-size (e.g. --batch-size 256)")
    assert info.value.exit_code == 3
    with pytest.raises(ValueError):
        with D.out_of_memory_hint("training", "--batch-size", 512):
            raise ValueError("not memory")


def test_train_out_of_memory_names_batch_size(monkeypatch, capsys, dataset, tmp_path):
    monkeypatch.setattr(T, "train_step", raise_oom)
    code, _, err = run(capsys, "train", "--data", str(dataset.root), "--config", "tiny", "--epochs", "1",
                       "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "run"))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 3 and len(errors) == 1 and "Traceback" not in err, err  # (the epoch bar may be drawn above)
    assert "out of GPU memory" in errors[0] and "--batch-size 32" in errors[0] and "--batch-size 16" in errors[0]


def test_eval_out_of_memory_names_batch_size(monkeypatch, capsys, dataset, tmp_path):
    from mgsv_cli.research import evaluation

    T.train(dataset.root, tiny(), out_dir=tmp_path / "run", device="cpu")
    monkeypatch.setattr(evaluation, "evaluate_model", raise_oom)
    code, _, err = run(capsys, "eval", "--data", str(dataset.root), "--checkpoint", str(tmp_path / "run"),
                       "--device", "cpu", "--batch-size", "64", "--json")
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert "while evaluating at --batch-size 64" in err


def test_index_out_of_memory_names_batch_windows(monkeypatch, capsys, tmp_path):
    from transformers import ASTModel

    from mgsv_cli.media import synth

    synth.synth_tone(tmp_path / "music" / "a.wav", seconds=6.0)
    monkeypatch.setattr(ASTModel, "forward", raise_oom)
    code, _, err = run(capsys, "index", str(tmp_path / "music"), "--index", str(tmp_path / "i.sqlite"),
                       "--encoders", "tiny", "--device", "cpu", "--no-beats", "--batch-windows", "3")
    assert code == 3 and "Traceback" not in err, err
    assert "out of GPU memory" in err and "--batch-windows" in err


# ----------------------------------------------------------------------------- the device-resident split


def assert_same_batch(host, resident, dtype=None):
    for name in host.__dataclass_fields__:
        a, b = getattr(host, name), getattr(resident, name)
        if dtype is not None and a.is_floating_point() and name in ("frames", "windows"):
            a = a.to(dtype)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b.cpu()), name


def test_device_split_batches_equal_the_memory_mapped_ones(dataset):
    split = load_split(dataset.root, "train")
    resident = split.to_device("cpu")
    assert isinstance(resident, DeviceSplit) and resident.video_feats.dtype == torch.float16
    assert resident.n == split.n and resident.n_batches(32, drop_last=True) == split.n_batches(32, drop_last=True)
    host_batches = list(split.batches(32, shuffle=True, seed=5, drop_last=True))
    resident_batches = list(resident.batches(32, shuffle=True, seed=5, drop_last=True))
    assert len(host_batches) == len(resident_batches) == split.n // 32
    for host, dev in zip(host_batches, resident_batches):
        assert_same_batch(host, dev)
    rows = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    assert_same_batch(split.batch(rows, dedupe_tracks=True), resident.batch(torch.from_numpy(rows), dedupe_tracks=True))
    assert_same_batch(split.batch(rows, keep_fp16=True), resident.batch(rows, keep_fp16=True))
    for videos in (np.array([0, 7, 2]), torch.tensor([5, 5])):
        for a, b in zip(split.video_inputs(videos, "cpu"), resident.video_inputs(videos)):
            assert torch.equal(a, b)
        for a, b in zip(split.track_inputs(videos, "cpu"), resident.track_inputs(videos)):
            assert torch.equal(a, b)


def test_device_split_in_16_bits_equals_the_converted_batches(dataset):
    split = load_split(dataset.root, "val")
    resident = split.to_device("cpu", torch.bfloat16)
    assert resident.track_feats.dtype == torch.bfloat16
    assert split.device_bytes(torch.bfloat16) < split.device_bytes()
    rows = np.arange(split.n)
    assert_same_batch(split.batch(rows), resident.batch(rows), torch.bfloat16)
    assert split.to_device("cpu", torch.float32).dtype == torch.float32  # 32-bit: stored precision, exact


def test_place_split_keeps_the_memory_map_on_a_cpu_and_checks_gpu_memory(dataset, monkeypatch):
    split = load_split(dataset.root, "val")
    assert place_split(split, torch.device("cpu")) is split
    assert place_split(split, torch.device("cpu"), "never") is split
    assert isinstance(place_split(split, torch.device("cpu"), "always"), DeviceSplit)
    with pytest.raises(ValueError):
        place_split(split, torch.device("cpu"), "sometimes")
    need = split.device_bytes()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * need, 80 << 30))
    assert D.free_memory(torch.device("cuda")) == 3 * need
    assert D.fits_in_memory(need, torch.device("cuda"), 0.5)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need, 80 << 30))
    assert not D.fits_in_memory(need, torch.device("cuda"), 0.5)
    assert place_split(split, torch.device("cuda")) is split  # too big for half the free memory: host path
    assert not D.fits_in_memory(1, torch.device("cpu"))


def test_training_with_the_resident_split_is_the_same_run(dataset, tmp_path):
    host = T.train(dataset.root, tiny(2), out_dir=tmp_path / "host", device="cpu", resident="never")
    resident = T.train(dataset.root, tiny(2), out_dir=tmp_path / "resident", device="cpu", resident="always")
    assert json.loads((tmp_path / "resident" / "train.log").read_text().splitlines()[0].split(" ", 3)[3])[
        "features"] == "on the device"
    a, b = load_file(str(host.run_dir / "last.safetensors")), load_file(str(resident.run_dir / "last.safetensors"))
    # The same batches in memory placed differently: MKL's float32 kernels may round the last bits
    # differently with the memory's alignment, and Adam carries that along for two epochs, so the
    # weights agree to about 1e-6 of their scale, not bit for bit.
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert [r["train_loss"] for r in host.history] == pytest.approx([r["train_loss"] for r in resident.history],
                                                                     rel=1e-5)
    assert json_close(host.best_metrics, resident.best_metrics, 1e-4), (host.best_metrics, resident.best_metrics)


def test_evaluation_on_the_resident_split_is_the_same(dataset, tmp_path):
    from mgsv_cli.models.checkpoint import load_model

    T.train(dataset.root, tiny(), out_dir=tmp_path / "run", device="cpu")
    model, _, _ = load_model(tmp_path / "run")
    split = load_split(dataset.root, "test")
    for batch_size in (7, 256):  # blocks smaller than the split, and one block
        host = evaluate_model(model, split, torch.device("cpu"), batch_size=batch_size)
        resident = evaluate_model(model, split.to_device("cpu"), torch.device("cpu"), batch_size=batch_size)
        # Ranks and IoUs from float32 scores of the same features placed differently: equal but for
        # the last bits of the sums (see above), which can move a mean by 1e-6, never a rank here.
        assert json_close(host, resident, 1e-5), (host, resident)


def test_gathered_ahead_keeps_order_and_errors():
    assert list(T.gathered_ahead(iter(range(7)))) == list(range(7))
    assert list(T.gathered_ahead(iter([]))) == []

    def broken():
        yield 1
        raise RuntimeError("disk")

    stream = T.gathered_ahead(broken())
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="disk"):
        next(stream)


def test_host_path_on_a_gpu_gathers_ahead(dataset, monkeypatch):
    """On CUDA with a split too big for the GPU, batches come from the background gatherer."""
    from mgsv_cli.research.dataset import Batch

    used, steps = [], []
    monkeypatch.setattr(T, "gathered_ahead", lambda batches, pin=False: used.append(pin) or batches)
    monkeypatch.setattr(T, "train_step", lambda model, opt, batch, *a, **k: steps.append(batch.rows) or 1.0)
    monkeypatch.setattr(Batch, "to", lambda self, device, non_blocking=False: self)  # no GPU to copy to
    split = load_split(dataset.root, "train")
    gpu = torch.device("cuda")
    T.run_epoch(_Model(), None, split, tiny(), 0, T._State(), 10, gpu, torch.float32, T.Reporter())
    assert used == [True] and len(steps) == split.n // 32
    used.clear()
    T.run_epoch(_Model(), None, split.to_device("cpu"), tiny(), 0, T._State(), 10, gpu, torch.float32, T.Reporter())
    assert used == []  # resident: nothing to gather on the host
    T.run_epoch(_Model(), None, split, tiny(), 0, T._State(), 10, torch.device("cpu"), torch.float32, T.Reporter())
    assert used == []  # the CPU keeps the plain memory-mapped loop


class _Model:
    def train(self, mode=True):
        return self


# ----------------------------------------------------------------------------- optimizer, compile, dtypes


def test_fused_adam_only_on_cuda():
    from mgsv_cli.models.made import MaDe

    variant = tiny()
    model = MaDe(variant.model)
    assert not T.build_optimizer(model, variant, torch.device("cpu")).param_groups[0]["fused"]
    assert T.build_optimizer(model, variant).param_groups[0]["fused"] in (None, False)
    fused = T.build_optimizer(model, variant, torch.device("cuda"))  # fused Adam also has a CPU kernel
    assert fused.param_groups[0]["fused"] is True


def test_fused_adam_resumes_exactly(dataset, tmp_path, monkeypatch):
    """The resume path a CUDA run takes (fused optimizer state), on the CPU's fused kernel."""
    monkeypatch.setattr(T, "build_optimizer", lambda model, variant, device=None: torch.optim.Adam(
        model.parameters(), lr=variant.train.lr, weight_decay=0.0, fused=True))

    class Stop(T.Reporter):
        def end_epoch(self, *args):
            raise KeyboardInterrupt

    straight = T.train(dataset.root, tiny(2), out_dir=tmp_path / "straight", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        T.train(dataset.root, tiny(2), out_dir=tmp_path / "resumed", device="cpu", reporter=Stop())
    resumed = T.train(dataset.root, tiny(2), out_dir=tmp_path / "resumed", device="cpu", resume=True)
    a = load_file(str(straight.run_dir / "last.safetensors"))
    b = load_file(str(resumed.run_dir / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_compile_flag_reaches_torch_compile(dataset, tmp_path, monkeypatch, capsys):
    compiled = []

    def fake_compile(model):
        compiled.append(type(model).__name__)
        return model

    monkeypatch.setattr(T, "compiled_forward", fake_compile)
    T.train(dataset.root, tiny(), out_dir=tmp_path / "lib", device="cpu")
    assert compiled == []  # off by default
    code, _, err = run(capsys, "train", "--data", str(dataset.root), "--config", "tiny", "--epochs", "1",
                       "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "cli"), "--compile")
    assert code == 0, err
    assert compiled == ["MaDe"]
    info = json.loads((tmp_path / "cli" / "train.log").read_text().splitlines()[0].split(" ", 3)[3])
    assert info["compile"] is True and info["fused_adam"] is False and info["features"] == "memory-mapped"


def test_gpu_precisions(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert D.compute_dtype(cuda) == torch.bfloat16  # training autocast, AST
    assert F._ast_dtype(cuda, "auto") == torch.bfloat16
    assert F._clip_dtype(cuda, "auto") == torch.float16  # CLIP as the reference ran it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert D.compute_dtype(cuda) == torch.float32


# ----------------------------------------------------------------------------- AST on a GPU


def test_batch_windows_and_workers_follow_the_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert F.auto_batch_windows(cpu) == F.DEFAULT_BATCH_WINDOWS
    assert F.audio_workers(cpu) == 1
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 << 30, 80 << 30))
    assert F.auto_batch_windows(cuda, torch.bfloat16) == F.MAX_GPU_BATCH_WINDOWS
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 80 << 30))
    assert F.auto_batch_windows(cuda, torch.bfloat16) == 8  # half of 1 GiB, 64 MiB a window
    assert F.auto_batch_windows(cuda, torch.float32) == 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 20, 80 << 30))
    assert F.auto_batch_windows(cuda, torch.bfloat16) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert F.audio_workers(cuda) == 15 and F.audio_workers(cpu) == 1


def test_load_encoders_batch_windows_option():
    assert F.load_encoders("tiny", device="cpu", parts=("music",)).batch_windows == F.DEFAULT_BATCH_WINDOWS
    assert F.load_encoders("tiny", device="cpu", parts=("music",), batch_windows=7).batch_windows == 7
    with pytest.raises(UsageError, match="--batch-windows"):
        F.load_encoders("tiny", device="cpu", parts=("music",), batch_windows=0)


def test_overlapped_pipeline_with_many_workers_gives_the_same_features(tmp_path):
    """The GPU pipeline (staged batches read back one batch late, several audio threads), forced on the CPU."""
    from _media_helpers import music_like

    plain = F.load_encoders("tiny", device="cpu", precision="fp32", parts=("music",))
    items = [(f"t{k}", music_like(4.0 + 3 * k, seed=k)) for k in range(5)] + [("empty", np.zeros(0, np.float32))]
    expected = list(plain.embed_tracks(items, batch_windows=3))
    gpu_like = F.load_encoders("tiny", device="cpu", precision="fp32", parts=("music",))
    gpu_like.overlap, gpu_like.workers = True, 3
    got = list(gpu_like.embed_tracks(items, batch_windows=3))
    assert [r.path for r in got] == [r.path for r in expected] == [name for name, _ in items]
    assert [r.ok for r in got] == [True] * 5 + [False]
    for a, b in zip(expected[:5], got[:5]):
        np.testing.assert_array_equal(a.mask, b.mask)
        # The same windows in the same batches, staged through other threads and buffers: equal to
        # float32 rounding (the index keeps them in float16 anyway).
        np.testing.assert_allclose(a.feats, b.feats, rtol=1e-5, atol=1e-6)
        assert a.feats[a.mask == 1].any() and int(a.mask.sum()) == int(R.window_valid(a.duration).sum())
