"""A frozen CNN's inference copy for the CPU: BatchNorm folded into the convolution before it, channels-last
memory. Same function to float rounding (checked on a probe batch when built; the eager model is kept
otherwise); EfficientNet-Lite0 ran 1.75x faster on one core of the 2-core CPU machine (BENCHMARKS.md).

Why it is safe for a frozen teacher: in eval mode BatchNorm is the affine map y = (x - mean) * s + beta
with s = gamma / sqrt(var + eps), so conv(x, W) followed by it equals conv(x, W * s) + (b - mean) * s + beta.
Which BatchNorm follows which convolution is read from one traced forward pass: a BatchNorm whose input is
the very tensor a convolution returned. A convolution output that something else also reads would make the
fold wrong; the probe comparison catches that and the fold is not used.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

RELATIVE_TOLERANCE = 1e-4  # of the probe output's largest magnitude


def conv_batchnorm_pairs(model: nn.Module, run: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                         probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) for every BatchNorm2d fed directly by a Conv2d's output in `run(model, probe)`."""
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (conv name, output kept alive)
    pairs: list[tuple[str, str]] = []

    def after_conv(module, args, output):
        produced[id(output)] = (names[module], output)

    def before_norm(module, args):
        hit = produced.get(id(args[0]))
        if hit is not None and hit[1] is args[0]:
            pairs.append((hit[0], names[module]))

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_norm) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            run(model, probe)
    finally:
        for hook in hooks:
            hook.remove()
    return pairs


def _after_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BatchNorm once folded: nothing, or the activation timm's BatchNormAct2d applies."""
    rest = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None)) if m is not None]
    return nn.Sequential(*rest) if rest else nn.Identity()


@torch.no_grad()
def folded_inference_copy(model: nn.Module, run: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                          probe: torch.Tensor) -> nn.Module | None:
    """An eval-mode copy of `model` with BatchNorm folded and channels-last weights, or None when nothing
    folds or the copy's output on `probe` differs from the model's beyond float rounding."""
    pairs = conv_batchnorm_pairs(model, run, probe)
    if not pairs:
        return None
    fast = copy.deepcopy(model).eval()
    modules = dict(fast.named_modules())
    for conv_name, norm_name in pairs:
        conv, norm = modules[conv_name], modules[norm_name]
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale + (norm.bias if norm.bias is not None else 0.0)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
        parent_name, _, child = norm_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else fast, child, _after_norm(norm))
    fast = fast.to(memory_format=torch.channels_last)
    want = run(model, probe)
    got = run(fast, probe.contiguous(memory_format=torch.channels_last))
    if got.shape != want.shape or (got - want).abs().max() > RELATIVE_TOLERANCE * want.abs().max().clamp_min(1e-6):
        return None
    return fast
