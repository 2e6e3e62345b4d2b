"""torchrun support: one code path for a single process and for N processes.

Under `torchrun` (env vars RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) `init_distributed`
joins the process group (NCCL on GPU, Gloo on CPU); without them everything below is a no-op
over a world of one, so callers never branch on "am I distributed".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
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


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True only if `flag` holds in every process (keeps processes' decisions in step)."""
    if not is_distributed():
        return bool(flag)
    tensor = torch.tensor(1 if flag else 0, dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


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
