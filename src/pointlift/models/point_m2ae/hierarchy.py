"""Point-M2AE's multi-scale grouping and masking: FPS centres per scale, kNN groups, a random top mask,
and visibility propagated down (a token is visible iff it is a member of a visible parent's group)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pointlift.errors import PointliftConfigError
from pointlift.models.point_m2ae.config import RELEASED_FPS_SKIP
from pointlift.ops import farthest_point_sample, gather, knn


@dataclass
class Hierarchy:
    """Multi-scale grouping of one batch, computed once and shared by encoder, decoder and losses.

    samples[s]:   (B, n_s) long FPS indices into the previous level (input points for s = 0).
    centers[s]:   (B, n_s, 3) centres of scale s.
    neighbors[s]: (B, n_s, k_s) long indices of each group's members in the previous level, nearest first.
    relative[s]:  (B, n_s, k_s, 3) member coordinates minus their centre.
    """

    points: torch.Tensor
    centers: list[torch.Tensor] = field(default_factory=list)
    neighbors: list[torch.Tensor] = field(default_factory=list)
    relative: list[torch.Tensor] = field(default_factory=list)
    samples: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_scales(self) -> int:
        return len(self.centers)

    def members(self, scale: int) -> torch.Tensor:
        """Absolute member coordinates (B, n_s, k_s, 3) of scale `scale` (the released `neighborhood_ori`)."""
        previous = self.points if scale == 0 else self.centers[scale - 1]
        return gather(previous, self.neighbors[scale])

    def point_index(self, scale: int) -> torch.Tensor:
        """Index (B, n_s) into the input points of each centre of scale `scale`."""
        index = self.samples[0]
        for s in range(1, scale + 1):
            index = index.gather(1, self.samples[s])
        return index


def group_hierarchy(xyz: torch.Tensor, num_centers=(512, 256, 64), group_sizes=(16, 8, 8),
                    fps_skip: float | None = RELEASED_FPS_SKIP) -> Hierarchy:
    """Group points (B, P, 3) into the FPS + kNN hierarchy of Point-M2AE (`Group_v2` per scale)."""
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise PointliftConfigError(f"group_hierarchy expects (B, P, 3) points, got {tuple(xyz.shape)}")
    hierarchy = Hierarchy(points=xyz)
    previous = xyz
    for count, k in zip(num_centers, group_sizes):
        sample = farthest_point_sample(previous, count, skip_radius2=fps_skip)
        centers = gather(previous, sample)
        _, idx = knn(centers, previous, k)
        hierarchy.samples.append(sample)
        hierarchy.centers.append(centers)
        hierarchy.neighbors.append(idx)
        hierarchy.relative.append(gather(previous, idx) - centers[:, :, None, :])
        previous = centers
    return hierarchy


def random_top_mask(batch: int, num_tokens: int, ratio: float, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Visible mask (B, num_tokens) bool with int(ratio * num_tokens) tokens masked in every row."""
    num_masked = int(ratio * num_tokens)
    if not 0 <= num_masked < num_tokens:
        raise PointliftConfigError(f"mask ratio {ratio} leaves no visible token among {num_tokens}")
    if generator is not None:
        device = generator.device
    scores = torch.rand(batch, num_tokens, generator=generator, device=device)
    ranks = scores.argsort(dim=-1).argsort(dim=-1)
    return ranks >= num_masked


def propagate_visibility(hierarchy: Hierarchy, top_visible: torch.Tensor, released_quirk: bool = False
                         ) -> list[torch.Tensor]:
    """Visible masks per scale (list of (B, n_s) bool, finest first) from the top-scale mask.

    A token below the top is visible only if it belongs to the kNN group of a visible parent.
    `released_quirk=True` also reproduces the released code's side effect: it zeroes the member
    indices of masked groups and scatters them, so whenever one group of the level above is masked,
    token 0 of the batch's *first* cloud becomes visible.
    """
    top = hierarchy.num_scales - 1
    expected = hierarchy.centers[top].shape[:2]
    if tuple(top_visible.shape) != tuple(expected):
        raise PointliftConfigError(f"top visible mask has shape {tuple(top_visible.shape)}, expected {tuple(expected)}")
    masks = [None] * hierarchy.num_scales
    masks[top] = top_visible.bool()
    for scale in range(top, 0, -1):
        idx = hierarchy.neighbors[scale]  # members in scale - 1
        votes = masks[scale][..., None].expand_as(idx).to(torch.int32)
        counts = torch.zeros(idx.shape[0], hierarchy.centers[scale - 1].shape[1], dtype=torch.int32, device=idx.device)
        counts.scatter_add_(1, idx.flatten(1), votes.flatten(1))
        visible = counts > 0
        if released_quirk and not bool(masks[scale].all()):
            visible[0, 0] = True
        masks[scale - 1] = visible
    return masks


def compact_visible(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, L) that bring each row's visible tokens to the front in increasing order, and the
    (B, L) validity mask. L is the largest visible count in the batch; shorter rows are padded."""
    counts = visible.sum(dim=-1)
    length = int(counts.max())
    order = torch.argsort((~visible).to(torch.int8), dim=-1, stable=True)[:, :length]
    valid = torch.arange(length, device=visible.device)[None, :] < counts[:, None]
    return order, valid


def expand_rows(x: torch.Tensor, order: torch.Tensor, valid: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` (B, n, C) with the valid rows of x (B, L, C) written back at their token positions `order`."""
    written = torch.zeros_like(full).scatter(1, order[..., None].expand_as(x), x)
    taken = torch.zeros(full.shape[:2], dtype=torch.bool, device=full.device).scatter(1, order, valid)
    return torch.where(taken[..., None], written, full)
