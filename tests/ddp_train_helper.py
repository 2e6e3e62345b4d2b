"""Run by tests/test_ddp.py, alone or under torchrun: train a small MLP and save its final weights.

Usage: python ddp_train_helper.py RUN_DIR OUT.safetensors [--interrupt-after N] [--resume]
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import save_file
from torch import nn

from pointlift.engine import distributed
from pointlift.engine.config import OptimConfig, TrainConfig
from pointlift.engine.trainer import train


class Data(torch.utils.data.Dataset):
    def __init__(self, n=52):
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--interrupt-after", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = MLP()
    config = TrainConfig(epochs=3, batch_size=8, seed=5, grad_clip=0.5, checkpoint_every=5, log_every=3,
                         optim=OptimConfig(lr=0.05, weight_decay=0.01, warmup_steps=3))
    result = train(model, Data(), config, args.run_dir, device="cpu", progress=False, resume=args.resume,
                   interrupt_after_step=args.interrupt_after)
    if distributed.is_main_process():
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, args.out, metadata={"step": str(result.step),
                                             "world_size": str(distributed.get_world_size())})
    distributed.cleanup()


if __name__ == "__main__":
    main()
