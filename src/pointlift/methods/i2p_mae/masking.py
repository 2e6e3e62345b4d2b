"""2D-guided masking of the top tokens (paper §3.3): tokens the 2D teacher finds salient are kept
visible more often, so the masked ones the network must rebuild are the less informative.

`released_top_mask` is the released `mask_2D_guided`; `guided_top_mask` is pointlift's
`masking: standardised`. Both draw with Gumbel-top-k when the dataset gives per-sample `noise`, so every
DDP rank draws the same masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pointlift.errors import PointliftConfigError


def released_top_mask(saliency: torch.Tensor, ratio: float, generator: torch.Generator | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """Visible mask (B, T) bool, the released `mask_2D_guided`: the first T - int(ratio*T) tokens of
    `torch.multinomial(softmax(saliency), T, replacement=False)` stay visible.

    With `noise` (B, T) uniform (drawn per sample by the dataset, so that every DDP rank draws the same
    masks), the same sequential draw is made by Gumbel-top-k on log softmax(saliency): the same
    distribution as the released call, from the sample's own random stream."""
    batch, tokens = saliency.shape
    num_keep = tokens - int(ratio * tokens)
    if not 0 < num_keep <= tokens:
        raise PointliftConfigError(f"mask ratio {ratio} leaves no visible token among {tokens}")
    probs = F.softmax(saliency.float(), dim=1)
    if noise is not None:
        gumbel = -torch.log(-torch.log(noise.to(probs.device).float().clamp(1e-12, 1 - 1e-7)))
        drawn = (torch.log_softmax(saliency.float(), dim=1) + gumbel).topk(num_keep, dim=1).indices
        return torch.zeros_like(probs, dtype=torch.bool).scatter_(1, drawn, True)
    drawn = torch.multinomial(probs, tokens, replacement=False, generator=generator)
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(1, drawn[:, :num_keep], True)


def guided_top_mask(saliency: torch.Tensor, ratio: float, temperature: float = 0.5,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """pointlift's `masking: standardised`. Visible mask (B, T) bool: T - int(ratio*T) tokens drawn
    without replacement from softmax(z / temperature), z = per-shape standardised saliency (B, T).
    Gumbel-top-k draws exactly that sequential sampling; `noise` (B, T) uniform, when given, is the
    per-sample draw (the same mask on any DDP rank)."""
    batch, tokens = saliency.shape
    num_visible = tokens - int(ratio * tokens)
    if not 0 < num_visible <= tokens:
        raise PointliftConfigError(f"mask ratio {ratio} leaves no visible token among {tokens}")
    s = saliency.float()
    z = (s - s.mean(dim=1, keepdim=True)) / s.std(dim=1, keepdim=True).clamp_min(1e-6)
    logits = torch.log_softmax(z / temperature, dim=1)
    uniform = noise if noise is not None else \
        torch.rand(s.shape, generator=generator, device=s.device if generator is None else generator.device)
    gumbel = -torch.log(-torch.log(uniform.to(s.device).clamp(1e-12, 1 - 1e-7)))
    chosen = (logits + gumbel).topk(num_visible, dim=1).indices
    return torch.zeros_like(s, dtype=torch.bool).scatter_(1, chosen, True)
