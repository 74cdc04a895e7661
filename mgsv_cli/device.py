"""Choosing the compute device and the precision to run on it, and what to do when it runs out."""
from __future__ import annotations

import contextlib
import re
from typing import Iterator, Optional

from mgsv_cli.errors import DeviceMemoryError, UsageError


def resolve_device(spec: str = "auto"):
    """Turn ``auto | cpu | cuda[:N] | mps`` into a ``torch.device``; errors if it is absent.

    ``auto`` takes the first CUDA GPU when torch sees one, else Apple MPS, else the CPU.
    An explicit choice that this machine cannot honour is a one-line UsageError saying
    why: a torch build without CUDA (or MPS) support, no GPU visible to a CUDA build, or
    a GPU number past the last one.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", spec):
        _check_cuda(torch, spec)
        return torch.device(spec)
    if spec == "mps":
        if not _mps_built(torch):
            raise UsageError(f"--device mps: this torch build ({torch.__version__}) has no Apple MPS support; "
                             "use --device cpu")
        if not _mps_available(torch):
            raise UsageError("--device mps: Apple MPS is not available on this machine (it needs Apple silicon "
                             "and macOS 12.3 or later); use --device cpu")
        return torch.device("mps")
    raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")


def _check_cuda(torch, spec: str) -> None:
    built = bool(getattr(torch.backends, "cuda", None) and torch.backends.cuda.is_built()) and bool(torch.version.cuda)
    if not built:
        raise UsageError(f"--device {spec}: this torch build ({torch.__version__}) has no CUDA support; install a "
                         "CUDA build of torch (see pytorch.org), or use --device cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: torch is built for CUDA {torch.version.cuda} but sees no GPU (driver "
                         "missing or too old, or CUDA_VISIBLE_DEVICES hides them; `nvidia-smi` tells); "
                         "use --device cpu")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        visible = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise UsageError(f"--device {spec}: only {count} CUDA GPU(s) are visible ({visible})")


def _mps_built(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_built())


def _mps_available(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def cpu_has_fast_bf16() -> bool:
    """True when this CPU does bfloat16 matrix work natively (AMX or AVX512-BF16)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def compute_dtype(device, precision: str = "auto"):
    """The dtype for heavy matrix work: bf16 where the hardware makes it pay, else fp32.

    ``precision`` is ``auto``, ``fp32`` or ``bf16``. ``auto`` is bf16 on a CUDA GPU that
    supports it (Ampere and later) and on a CPU with native bf16, fp32 elsewhere.
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


# ----------------------------------------------------------------------------- GPU memory


def free_memory(device) -> Optional[int]:
    """Free bytes on a CUDA ``device`` (``torch.cuda.mem_get_info``); None for other devices."""
    import torch

    if getattr(device, "type", None) != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def fits_in_memory(n_bytes: int, device, fraction: float = 0.5) -> bool:
    """True when ``n_bytes`` take at most ``fraction`` of the free memory of a CUDA ``device``
    (always False for other devices: on a CPU the memory-mapped path is the cheap one)."""
    free = free_memory(device)
    return free is not None and n_bytes <= fraction * free


def device_name(device) -> str:
    """``"cuda:0 (NVIDIA H100 80GB HBM3)"``, ``"cpu"``, ``"mps"``: for logs and reports."""
    import torch

    if getattr(device, "type", None) == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (oom, torch.cuda.OutOfMemoryError)):
        return True
    # MPS reports running out as a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "MPS backend out of memory" in str(exc)


@contextlib.contextmanager
def out_of_memory_hint(what: str, option: str, value=None, device=None) -> Iterator[None]:
    """Turn a GPU out-of-memory error inside the block into a one-line :class:`DeviceMemoryError`.

    ``what`` says what was running ("training"), ``option`` names the flag that lowers
    the batch (``--batch-size``) and ``value`` its current value, so the message can
    suggest half of it. The cached blocks are handed back before the error leaves.
    """
    try:
        yield
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        where = f" on {device}" if device is not None else ""
        at = f" at {option} {value}" if value is not None else ""
        example = f" (e.g. {option} {int(value) // 2})" if isinstance(value, int) and value > 1 else ""
        raise DeviceMemoryError(f"out of GPU memory{where} while {what}{at}: lower {option}{example}") from None


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
