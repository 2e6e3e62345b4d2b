"""The trainer's per-step finiteness check: sums (with the exact test as fallback) vs one isfinite mask per tensor.

    OMP_NUM_THREADS=1 bash scripts/with-env.sh python bench/finite_check.py

After every step the trainer checks that every checkpointed tensor is finite. The exact test builds a boolean
mask the size of each tensor; `nonfinite_tensors` first sums each tensor (a finite sum proves it finite) and
takes the exact test only when a sum is not finite. Both run here on the same untrained U-Nets, alternating,
min of `--repeats` calls each; prints ms per check.
"""

from __future__ import annotations

import argparse
import time

import torch

from pointlift.engine.checkpoint import model_state_for_checkpoint
from pointlift.engine.trainer import nonfinite_tensors
from pointlift.models.sparse_unet import sparse_unet


def mask_test(model: torch.nn.Module) -> bool:
    """The exact test alone: one isfinite mask per floating-point tensor."""
    state = [v for v in model_state_for_checkpoint(model).values() if v.is_floating_point()]
    return bool(torch.stack([torch.isfinite(v).all() for v in state]).all())


def best_ms(fns: list, repeats: int) -> list[float]:
    """Min wall time of each function over `repeats` rounds, the functions alternating within a round."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return [b * 1e3 for b in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    for name in ("spunet-tiny", "spunet-v1m1"):
        model = sparse_unet(name, in_channels=3, out_channels=20)
        params = sum(p.numel() for p in model.parameters())
        assert mask_test(model) and nonfinite_tensors(model) == []
        mask, sums = best_ms([lambda: mask_test(model), lambda: nonfinite_tensors(model)], args.repeats)
        print(f"{name} ({params / 1e6:.1f}M parameters, {torch.get_num_threads()} thread(s)): isfinite masks "
              f"{mask:.2f} ms, sums {sums:.2f} ms ({mask / sums:.1f}x)")


if __name__ == "__main__":
    main()
