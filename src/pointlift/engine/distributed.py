"""torchrun support: one code path for a single process and for N processes.

Under `torchrun` (env vars RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) `init_distributed`
joins the process group (NCCL for CUDA tensors, Gloo for CPU tensors); without them everything
below is a no-op over a world of one, so callers never branch on "am I distributed".

Collective waits time out after `POINTLIFT_COLLECTIVE_TIMEOUT` seconds (default 600): a process
that died or froze ends the run with `CollectiveTimeout` (one line from the CLI) instead of leaving
the others waiting for torch's default half hour.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pointlift.errors import PointliftConfigError, PointliftError

DEFAULT_TIMEOUT_S = 600.0


class CollectiveTimeout(PointliftError):
    """A collective operation failed or timed out: another process died, froze or lost its connection."""

    exit_code = 3


def collective_timeout() -> float:
    """Seconds a process waits in a collective before giving up (`POINTLIFT_COLLECTIVE_TIMEOUT`)."""
    text = os.environ.get("POINTLIFT_COLLECTIVE_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise PointliftConfigError(f"POINTLIFT_COLLECTIVE_TIMEOUT: expected seconds > 0, got {text!r}")
    return value


def is_collective_failure(error: BaseException) -> bool:
    """Whether `error` (raised inside a training step) is a failed or timed-out collective."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("timed out", "timeout", "connection closed", "connection reset", "gloo", "nccl"))


def collective_failure(error: BaseException) -> CollectiveTimeout:
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return CollectiveTimeout(f"process {get_rank()} of {get_world_size()}: a collective wait failed (limit "
                             f"{collective_timeout():g} s, POINTLIFT_COLLECTIVE_TIMEOUT); another process died or "
                             f"froze ({first})")


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the torchrun process group if launched by torchrun; pick this process's device.

    `device=None` means cuda:LOCAL_RANK when CUDA is available, else CPU. Safe to call twice.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank if launched_by_torchrun() else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not launched_by_torchrun() or (int(os.environ["WORLD_SIZE"]) == 1 and not dist.is_initialized()):
        return DistributedContext(0, 1, 0, device, None)
    if not dist.is_initialized():
        # CPU tensors (run-dir names, flags) go through gloo even when the model is on CUDA
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=collective_timeout()))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend())


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor | float) -> torch.Tensor | float:
    """Mean over processes; tensors stay on their device, floats come back as floats."""
    if not is_distributed():
        return value
    if isinstance(value, torch.Tensor):
        reduced = value.detach().clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced / get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item() / get_world_size()


def global_count(count: int, device: torch.device | str = "cpu") -> int:
    """The sum of `count` over processes (a loss normalised by it weighs every row of the global batch
    alike, whatever process holds it)."""
    if not is_distributed():
        return int(count)
    tensor = torch.tensor(int(count), dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True only if `flag` holds in every process (keeps processes' decisions in step)."""
    if not is_distributed():
        return bool(flag)
    tensor = torch.tensor(1 if flag else 0, dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Process `src`'s `obj`, in every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


class _GatherRows(torch.autograd.Function):
    """all_gather of (n_r, ...) tensors with different n_r, differentiable: the gradient of each
    process's rows is the sum over processes of the gradients of the gathered copy (all_reduce)."""

    @staticmethod
    def forward(ctx, tensor, counts):
        width = max(counts)
        padded = tensor.new_zeros((width,) + tuple(tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        ctx.counts, ctx.rank = counts, get_rank()
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start: start + ctx.counts[ctx.rank]], None


def all_gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(every process's rows concatenated in rank order, rows per process); differentiable."""
    if not is_distributed():
        return tensor, [tensor.shape[0]]
    count = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    return _GatherRows.apply(tensor, counts), counts


def all_gather_object(obj: Any) -> list:
    """Every process's `obj`, indexed by rank."""
    if not is_distributed():
        return [obj]
    gathered: list = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    """Leave the process group (end of a torchrun program)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
