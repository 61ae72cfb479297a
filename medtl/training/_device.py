"""Hardware choices: device, threads, channels-last, autocast precision."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from medtl._options import look_up_option

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; ``"cpu"``/``"cuda"``/``"cuda:1"`` are taken as given.

    In a multi-GPU ``torchrun`` job a bare ``"cuda"`` (or ``"auto"``) is this process's own GPU,
    ``cuda:LOCAL_RANK``.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from medtl.errors import ConfigError

        raise ConfigError(
            f"The 'device' parameter is {device!r} but no CUDA GPU is available. Use device='cpu' or 'auto'."
        )
    if device == "cuda":
        from medtl import distributed

        if distributed.world_size() > 1:
            return torch.device("cuda", distributed.local())
    return torch.device(device)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy batch as a tensor on ``device``: pinned memory and a non-blocking copy on CUDA."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def cuda_dtype(precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype on CUDA: bf16 where the GPU supports it (``auto``), else fp16; None = fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def grad_scaler(device: torch.device, precision: str = "auto") -> torch.amp.GradScaler | None:
    """A gradient scaler when training runs in fp16 on CUDA (bf16 and fp32 need none), else None."""
    if device.type == "cuda" and cuda_dtype(precision) == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX).

    Without them, bf16 autocast on CPU is emulated and slower than fp32, so we fall back to fp32.
    """
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_context(
    device: torch.device, precision: str = "auto"
) -> contextlib.AbstractContextManager:
    """Mixed precision where the hardware supports it.

    Args:
        device: the model's device.
        precision: ``"auto"`` (bf16 on CPUs with native bf16; on CUDA see below), ``"bf16"``, ``"fp16"`` or
            ``"fp32"`` (no autocast). On CUDA ``"auto"`` is bf16 where the GPU supports it (Ampere and
            newer), else fp16 (training then uses a gradient scaler, see :func:`grad_scaler`).
    """
    precision = look_up_option("precision", precision, ["auto", "bf16", "fp16", "fp32"])
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=cuda_dtype(precision))
    if precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16()):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision :func:`autocast_context` actually computes in: ``fp32``, ``bf16`` or ``fp16``
    (``auto`` resolved for this device; part of the embedding cache's key)."""
    precision = look_up_option("precision", precision, ["auto", "bf16", "fp16", "fp32"])
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        return "bf16" if cuda_dtype(precision) == torch.bfloat16 else "fp16"
    if precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16()):
        return "bf16"
    return "fp32"


def training_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision a training step uses: ``"auto"`` means fp32 on a CPU.

    bf16 autocast pays off for inference on CPUs with native bf16 but not for training steps: on this
    project's 2-core CPU (AMX/AVX512-BF16), a 32-image EfficientNet-Lite0 step at 224 px in 4-image passes
    took 1.03-1.28 s in fp32 against 1.52-1.89 s with bf16 autocast (6 alternating steps each, after
    warm-up), while inference of 64 images took 0.31-0.34 s in bf16 against 0.40-0.49 s in fp32. On CUDA
    ``"auto"`` keeps mixed precision. An explicit ``"bf16"`` is honoured everywhere.
    """
    precision = look_up_option("precision", precision, ["auto", "bf16", "fp16", "fp32"])
    if precision == "auto" and device.type == "cpu":
        return "fp32"
    return precision


def describe_precision(device: torch.device, precision: str = "auto") -> str:
    """Human-readable name of the precision :func:`autocast_context` will use (inference), and of
    the training steps' when they differ (see :func:`training_precision`)."""
    inference = _describe_inference(device, precision)
    training = _describe_inference(device, training_precision(device, precision))
    if training != inference:
        return f"{inference} for inference, {training.split(' (')[0]} for training"
    return inference


def _describe_inference(device: torch.device, precision: str) -> str:
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        return (
            "bf16 (autocast)"
            if cuda_dtype(precision) == torch.bfloat16
            else "fp16 (autocast, grad scaler)"
        )
    if precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16()):
        return "bf16 (autocast)"
    return "fp32 (CPU has no native bf16)"


# Images per forward pass on a CPU, expressed as pixels so it scales with image size. Measured with
# benchmarks/bench_speed.py on a 2-core AMD EPYC (EfficientNet-Lite0, channels-last, fp32): at 224 px a
# batch of 4 runs inference 1.5x faster than a batch of 32; at 128 px batches of 8-64 are level. Inference
# (extraction, prediction, validation passes) uses this.
CPU_PIXELS_PER_PASS = 4 * 224 * 224
# Images per training pass on a CPU, inside retained_allocations. Passes of 4 had looked fastest for
# training too (folded LP-FT step on 32 real Kermany images: 23.3 / 22.2 / 19.4 images/s in passes of
# 4 / 16 / 32), but that was glibc mapping every large activation afresh, not the CPU cache: with freed
# memory kept, the default step (stride <= 8 stages frozen) ran 40.0 / 43.3 images/s in passes of 16
# against 32.9 / 33.7 with glibc's default allocation (passes of 8: 38.7 / 39.4; 32: 40.4 / 41.0), and
# with every layer trained 29.5 / 29.4 against 24.6 / 25.8 in passes of 4 (Lite0, 224 px, folded, idle,
# profile_ft_step.py and probes, 2026-12-07).
CPU_TRAIN_PIXELS_PER_PASS = 16 * 224 * 224

# glibc's mallopt parameters (malloc.h) and the defaults retained_allocations gives back
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_MMAP_MAX = 65536
# what glibc's dynamic rule reaches (2 x its 32 MiB mmap threshold)
_TRIM_THRESHOLD_AFTER = 64 << 20
_RETAIN_LOCK = threading.Lock()
_RETAINING = [0]  # fits inside retained_allocations now


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (an AttributeError names musl and friends)
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def retained_allocations() -> Iterator[bool]:
    """Inside the block, freed memory stays in the process for the next allocation (glibc only).

    glibc's malloc hands out blocks above its mmap threshold (at most 32 MiB) as fresh pages and unmaps
    them when freed, so every large activation page-faults its memory again. In passes of 16 images at
    224 px a training step allocates tens of such tensors (16 x 96 x 112 x 112 fp32 = 77 MB): filling one
    padded map took 17.7 ms, and the step ran ~20% slower than with the memory kept. PyTorch's advice is
    a caching allocator (jemalloc or tcmalloc via ``LD_PRELOAD``), which a library cannot impose on its
    host process; ``mallopt`` can, for the length of a fit: no mmap'd blocks, no trimming of the heap.
    On exit the defaults come back and ``malloc_trim`` returns the free memory to the system (a
    long-lived app does not keep a fit's peak; with fits nested or in parallel threads, the last one
    out). A fit in a thread other than the main one gains less: glibc's per-thread heaps are at most
    64 MiB, and larger blocks are mapped there regardless. Hand-written: no library does this.

    Yields:
        True when the allocator was changed (glibc), False elsewhere (nothing changed).
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _RETAIN_LOCK:  # nested or concurrent fits: the last one out gives the defaults back
        _RETAINING[0] += 1
        changed = bool(libc.mallopt(_M_MMAP_MAX, 0))
        changed = bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and changed
    try:
        yield changed
    finally:
        with _RETAIN_LOCK:
            _RETAINING[0] -= 1
            if not _RETAINING[0]:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_AFTER)
                libc.malloc_trim(0)


def micro_batch_size(
    device: torch.device,
    image_size: int,
    batch_size: int | None = None,
    *,
    training: bool = False,
) -> int:
    """How many images to push through the network at once on ``device`` (sized for a CPU's cache and
    allocator: :data:`CPU_PIXELS_PER_PASS`, or :data:`CPU_TRAIN_PIXELS_PER_PASS` for training).

    Args:
        device: where the model runs; on CUDA the answer is ``batch_size`` (or 128): GPUs want big
            batches.
        image_size: side of the (square) input in pixels.
        batch_size: the logical batch (an optimiser step or a caller's request); the answer never exceeds
            it.
        training: a training step inside :func:`retained_allocations` (larger passes pay off there).
    """
    if device.type != "cpu":
        return int(batch_size or 128)
    pixels = CPU_TRAIN_PIXELS_PER_PASS if training else CPU_PIXELS_PER_PASS
    n = max(2, round(pixels / max(1, int(image_size)) ** 2))
    return int(min(n, batch_size)) if batch_size else int(n)
