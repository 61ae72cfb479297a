"""Running past one process: PyTorch's own distributed engine (``torchrun``), nothing invented here.

This module owns everything about process groups, so the rest of medtl asks it only small questions:
:func:`is_main` (rank 0 writes the run folder), :func:`rank` / :func:`world_size` / :func:`local`,
:func:`shard` (which items are mine), :func:`map_shards` (compute on my contiguous slice, gather every
rank's slices in order), :func:`all_gather_object` and :func:`broadcast_object`. Without a process group
every function behaves as a single process would (rank 0 of 1), so library code calls them
unconditionally and CPU behaviour is unchanged.

``torchrun`` starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_from_env` (called by the ``medtl`` command when those are present) joins
the group: gloo on CPU, NCCL on CUDA, chosen automatically, with a timeout on collectives so that a
killed rank fails the job with a message instead of hanging.

Example:
    >>> # torchrun --nproc_per_node=2 -m medtl compare --data ./xrays --out runs/cmp --batch-size 32
    >>> from medtl import distributed
    >>> mine = distributed.shard(list(range(10)))  # rank 0 of 2: [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from medtl.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: environment variable (seconds) bounding every collective; short in tests, generous by default
TIMEOUT_ENV = "MEDTL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(ConfigError):
    """A distributed run cannot start or cannot continue (bad world size, rendezvous, a lost rank)."""


# -- the group ---------------------------------------------------------------------------------------
def launched_by_torchrun(env: dict[str, str] | None = None) -> bool:
    """True when the process was started by ``torchrun`` (its rank variables are set)."""
    env = os.environ if env is None else env
    return all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def is_initialized() -> bool:
    """True when a process group is active in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the job (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def local() -> int:
    """This process's rank on its own machine (``LOCAL_RANK``; 0 without a process group)."""
    if not is_initialized():
        return 0
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that writes files (rank 0, or the only process)."""
    return rank() == 0


def collective_timeout(env: dict[str, str] | None = None) -> timedelta:
    """The timeout on collectives: ``MEDTL_DIST_TIMEOUT`` seconds, default 600."""
    env = os.environ if env is None else env
    raw = env.get(TIMEOUT_ENV)
    if raw is None:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
        if not seconds > 0:
            raise ValueError
    except ValueError:
        raise DistributedError(
            f"{TIMEOUT_ENV} must be a number of seconds > 0. Got {raw!r}. "
            f"Unset it (default {DEFAULT_TIMEOUT_S:g}) or set e.g. {TIMEOUT_ENV}=300."
        ) from None
    return timedelta(seconds=seconds)


def init_from_env(device: str = "auto") -> bool:
    """Join the process group described by ``torchrun``'s environment; no-op outside ``torchrun``.

    The backend follows the hardware: NCCL when CUDA is available and ``device`` is not ``"cpu"``
    (each process then uses GPU ``LOCAL_RANK``), gloo otherwise.

    Returns:
        True when a process group with more than one process is active afterwards.

    Raises:
        DistributedError: the rendezvous (``MASTER_ADDR:MASTER_PORT``) cannot be reached in time, or
            CUDA was asked for on a machine with fewer GPUs than local processes.
    """
    if is_initialized():
        return world_size() > 1
    if not launched_by_torchrun():
        return False
    n = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistributedError(
            f"The 'train.device' is {device!r} but no CUDA GPU is available on this node "
            f"(rank {os.environ['RANK']}). Use --device cpu (gloo), or run on GPU nodes."
        )
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this node "
                f"but it has {torch.cuda.device_count()} GPU(s) (LOCAL_RANK={local_rank}). Use "
                "--nproc_per_node equal to the number of GPUs, or --device cpu."
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    addr = os.environ.get("MASTER_ADDR", "?")
    port = os.environ.get("MASTER_PORT", "?")
    try:
        dist.init_process_group(backend=backend, timeout=collective_timeout())
    except (RuntimeError, ValueError, OSError) as exc:
        raise DistributedError(
            f"Rank {os.environ.get('RANK')} of {n} could not join the rendezvous at "
            f"MASTER_ADDR={addr} MASTER_PORT={port} ({type(exc).__name__}: {exc}). Check that every "
            "node can reach that address and port (firewall, --rdzv_endpoint / --master_addr), "
            "and that all nodes were started with the same --nnodes."
        ) from None
    log.info("rank %d of %d joined (%s, local rank %d)", rank(), world_size(), backend, local_rank)
    return world_size() > 1


def shutdown() -> None:
    """Leave the process group (end of the ``medtl`` command)."""
    if is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# -- checks before any work --------------------------------------------------------------------------
def check_config(cfg: Any, batched: Sequence[str] | None = None) -> None:
    """Refuse, before data loading or training, a config that cannot run on this job's processes.

    Checks that the world size divides ``train.batch_size`` (each rank takes an equal share of every
    global batch, so the result does not depend on the number of processes) and that CUDA exists when
    ``train.device`` asks for it. ``batched``: the strategies whose batch the processes share
    (those trained in epochs; None: every strategy with a ``batch_size``).
    """
    n = world_size()
    device = str(cfg.train.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistributedError(
            f"The 'train.device' is {device!r} but no CUDA GPU is available on this machine. Use "
            "--device cpu (or auto), or run on a machine with a GPU."
        )
    if n > 1 and cfg.train.batch_size % n:
        lo = cfg.train.batch_size - cfg.train.batch_size % n
        raise DistributedError(
            f"The 'train.batch_size' is {cfg.train.batch_size}, which the world size {n} does not "
            f"divide: every process takes an equal share of each global batch. Use a multiple of {n} "
            f"(e.g. --batch-size {max(n, lo)} or {lo + n}), or start torchrun with a world size "
            "that divides it."
        )
    for name, params in (getattr(cfg, "params", None) or {}).items():
        b = params.get("batch_size") if isinstance(params, dict) else None
        if n > 1 and isinstance(b, int) and (batched is None or name in batched) and b % n:
            raise DistributedError(
                f"The 'params.{name}.batch_size' is {b}, which the world size {n} does not divide. "
                f"Use a multiple of {n}."
            )


# -- coordination ------------------------------------------------------------------------------------
@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first (e.g. decoding into the shared cache); the others then run it.

    Example:
        >>> with distributed.main_first():
        ...     data = load_data(cfg)  # rank 0 decodes and caches, the others read the cache
    """
    if world_size() > 1 and not is_main():
        barrier()
    try:
        yield
    finally:
        if world_size() > 1 and is_main():
            barrier()


def barrier() -> None:
    """Wait for every rank (no-op for one process); a lost rank raises :class:`DistributedError`."""
    if world_size() > 1:
        with _collective("barrier"):
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    with _collective("all_gather_object"):
        dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; ``obj`` is ignored elsewhere)."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    with _collective("broadcast_object"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only (e.g. reading or writing the run folder), its result given to every
    rank; an exception it raises is raised on every rank (so no rank waits for the others forever)."""
    if world_size() == 1:
        return fn()
    import pickle

    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except Exception as exc:
            error = exc
    shipped = error
    if error is not None:
        try:  # some exceptions cannot be rebuilt from their pickle; send their text instead
            pickle.loads(pickle.dumps(error))
        except Exception:
            shipped = RuntimeError(f"{type(error).__name__}: {error}")
    result, shipped = broadcast_object((result, shipped))
    if error is not None:
        raise error
    if shipped is not None:
        raise shipped
    return result


def all_reduce_sum(value: float) -> float:
    """The sum of a float over ranks (the value itself for one process)."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    with _collective("all_reduce"):
        dist.all_reduce(t)
    return float(t.item())


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into a :class:`DistributedError` naming the cause."""
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, dist.DistError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(
            f"Rank {rank()} of {world_size()}: {what} failed ({first}). Another process of the job "
            "stopped or became unreachable (killed, out of memory, node lost). Finished results are "
            "in the run folder; rerun the same torchrun command with --resume to continue. "
            f"({TIMEOUT_ENV} bounds how long a rank waits.)"
        ) from exc


# -- sharding ----------------------------------------------------------------------------------------
def shard_bounds(n: int, r: int | None = None, size: int | None = None) -> tuple[int, int]:
    """``[start, stop)`` of rank ``r``'s contiguous share of ``n`` items (sizes differ by at most 1)."""
    r = rank() if r is None else r
    size = world_size() if size is None else size
    base, extra = divmod(n, size)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def shard(seq: Sequence[T], *, strided: bool = False) -> list[T]:
    """This rank's share of ``seq``: a contiguous block, or every ``world_size()``-th item (``strided``,
    which balances work when costs grow along the sequence)."""
    if strided:
        return list(seq[rank() :: world_size()])
    start, stop = shard_bounds(len(seq))
    return list(seq[start:stop])


def map_shards(fn: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
    """``fn(indices)`` on this rank's contiguous share of ``range(n)``, every share gathered in order.

    ``fn`` maps an index array to an array with one row per index; the result equals
    ``fn(np.arange(n))`` up to floating-point differences of the batch composition. Every rank must
    call it with the same ``n`` (it is a collective).
    """
    if world_size() == 1:
        return fn(np.arange(n))
    start, stop = shard_bounds(n)
    part = np.asarray(fn(np.arange(start, stop)))
    parts = [p for p in all_gather_object(part) if len(p)]
    if not parts:
        return part
    return np.concatenate(parts)


__all__ = [
    "DistributedError",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "check_config",
    "collective_timeout",
    "init_from_env",
    "is_initialized",
    "is_main",
    "launched_by_torchrun",
    "local",
    "main_first",
    "map_shards",
    "on_main",
    "rank",
    "shard",
    "shard_bounds",
    "shutdown",
    "world_size",
]
