"""Choosing the compute device and the precision to run on it."""
from __future__ import annotations

import re

from mgsv_cli.errors import UsageError


def resolve_device(spec: str = "auto"):
    """Turn ``auto | cpu | cuda[:N] | mps`` into a ``torch.device``; errors if it is absent."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", spec):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA GPU is visible to torch")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(spec)
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError("--device mps: Apple MPS is not available")
        return torch.device("mps")
    raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU does bfloat16 matrix work natively (AMX or AVX512-BF16)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def compute_dtype(device, precision: str = "auto"):
    """The dtype for heavy matrix work: bf16 where the hardware makes it pay, else fp32.

    ``precision`` is ``auto``, ``fp32`` or ``bf16``.
    """
    import torch

    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise UsageError(f"precision {precision!r}: expected auto, fp32 or bf16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def tune_malloc_for_training() -> None:
    """Keep freed memory inside the process during training (glibc only; no-op elsewhere).

    On CPU much of a training step otherwise goes to the kernel handing the same large
    activation buffers back and forth; this is what MALLOC_ARENA_MAX=1 and large
    MALLOC_MMAP_THRESHOLD_/TRIM_THRESHOLD_/TOP_PAD_ do, applied from inside the process.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold, m_arena_max = -1, -2, -3, -8
    big = 1 << 30
    for option, value in ((m_arena_max, 1), (m_mmap_threshold, 1 << 25), (m_trim_threshold, big), (m_top_pad, 1 << 28)):
        mallopt(option, value)
