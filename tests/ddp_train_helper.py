"""Used by tests/test_ddp.py: train a small MLP (no BatchNorm) with the engine.

Under torchrun (`python -m torch.distributed.run --nproc_per_node 2 ddp_train_helper.py OUT_DIR`) it
does, in one launch to save start-up time: an uninterrupted run (-> OUT_DIR/straight.safetensors),
then a run interrupted at step 8 and resumed with a fresh model (-> OUT_DIR/resumed.safetensors).
The test imports `train_once` to make the single-process reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from pointlift.engine import distributed
from pointlift.engine.config import OptimConfig, TrainConfig
from pointlift.engine.trainer import train

CONFIG = TrainConfig(epochs=3, batch_size=8, seed=5, grad_clip=0.5, checkpoint_every=5, log_every=3,
                     optim=OptimConfig(lr=0.05, weight_decay=0.01, warmup_steps=3))


class Data(torch.utils.data.Dataset):
    def __init__(self, n=52):  # 52 // 8 = 6 steps per epoch, with a remainder that must be dropped
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = torch.sin(self.x @ torch.randn(5, 2, generator=g))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 2))

    def forward(self, batch):
        loss = (self.net(batch["x"]) - batch["y"]).pow(2).mean()  # a mean over the batch
        return {"loss": loss}


def train_once(run_dir, **kwargs) -> tuple[dict[str, torch.Tensor], int]:
    """(final weights, steps) of a run from the fixed initial weights."""
    torch.manual_seed(0)
    model = MLP()
    result = train(model, Data(), CONFIG, run_dir, device="cpu", progress=False, **kwargs)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, result.step


class FreezingMLP(MLP):
    """On rank 1, stops its own process (SIGSTOP, as a hung or paused worker) at the 3rd forward."""

    calls = 0

    def forward(self, batch):
        self.calls += 1
        if self.calls == 3 and distributed.get_rank() == 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGSTOP)
        return super().forward(batch)


def freeze(out_dir: Path) -> int:
    """Train while rank 1 freezes: rank 0 must give up after POINTLIFT_COLLECTIVE_TIMEOUT seconds with
    one line (as the CLI prints it) and exit code 3."""
    from pointlift.errors import PointliftError

    torch.manual_seed(0)
    try:
        train(FreezingMLP(), Data(), CONFIG, out_dir / "frozen", device="cpu", progress=False)
    except PointliftError as error:
        print(f"pointlift: error: {error}", file=sys.stderr)
        return int(getattr(error, "exit_code", 2))
    return 0


def main(out_dir: Path) -> None:
    results = {
        "straight": train_once(out_dir / "straight"),
        "interrupted": train_once(out_dir / "cut", interrupt_after_step=8),
        "resumed": train_once(out_dir / "cut", resume=True),
    }
    if distributed.is_main_process():
        for name, (state, step) in results.items():
            save_file(state, str(out_dir / f"{name}.safetensors"),
                      metadata={"step": str(step), "world_size": str(distributed.get_world_size())})
    distributed.cleanup()


if __name__ == "__main__":
    if sys.argv[2:] == ["freeze"]:
        sys.exit(freeze(Path(sys.argv[1])))
    main(Path(sys.argv[1]))
