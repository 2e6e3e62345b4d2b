"""BatchNorm statistics over the global batch under torchrun, on CPU (gloo) as on GPU.

Why not torch.nn.SyncBatchNorm: it refuses CPU tensors, and `convert_sync_batchnorm` replaces each
module by a plain SyncBatchNorm, which would drop `SparseBatchNorm`'s SparseTensor forward.
`convert_sync_batchnorm` here keeps every module (and its state-dict names) and only swaps its class
for a subclass whose batch statistics are all-reduced: sum, sum of squares and count over every
process, so N processes normalise exactly as one process with the whole batch (up to float
summation order), and gradients flow back through the reduction. Ranks may hold different numbers
of rows (sparse voxels). Outside training, or in a single process, it is the plain BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every process's input is the sum of all output gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _synced(self: _BatchNorm, input: torch.Tensor) -> torch.Tensor:
    channels = input.shape[1]
    rows = input.transpose(0, 1).reshape(channels, -1)  # (C, N*L)
    wide = rows.double()  # float64 sums: E[x^2] - E[x]^2 loses nothing that matters at these sizes
    count = torch.full((1,), float(rows.shape[1]), dtype=torch.float64, device=input.device)
    totals = _AllReduceSum.apply(torch.cat([wide.sum(1), (wide * wide).sum(1), count]))
    n = totals[-1]
    mean = totals[:channels] / n
    var = (totals[channels:2 * channels] / n - mean * mean).clamp_min(0)
    if self.track_running_stats:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            unbiased = var * (n / (n - 1)) if n > 1 else var
            self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
            self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
    shape = (1, channels) + (1,) * (input.dim() - 2)
    scale = torch.rsqrt(var + self.eps).to(input.dtype)
    out = (input - mean.to(input.dtype).view(shape)) * scale.view(shape)
    if self.affine:
        out = out * self.weight.view(shape) + self.bias.view(shape)
    return out


class _SyncedBatchNorm(_BatchNorm):
    """Mixin placed right before `_BatchNorm` in the MRO (see `convert_sync_batchnorm`)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._check_input_dim(input)
            return _synced(self, input)
        return super().forward(input)


_CLASSES: dict[type, type] = {}


def convert_sync_batchnorm(module: nn.Module) -> int:
    """Make every BatchNorm inside `module` synchronise its batch statistics across processes (in place).
    Returns how many were converted."""
    converted = 0
    for layer in module.modules():
        cls = type(layer)
        if isinstance(layer, _BatchNorm) and not isinstance(layer, (_SyncedBatchNorm, nn.SyncBatchNorm)):
            if cls not in _CLASSES:
                # (cls, mixin): the subclass's own forward (e.g. SparseBatchNorm's) still runs first and its
                # super().forward lands on the mixin, before _BatchNorm's
                _CLASSES[cls] = type(f"Synced{cls.__name__}", (cls, _SyncedBatchNorm), {"__module__": __name__})
            layer.__class__ = _CLASSES[cls]
            converted += 1
    return converted
