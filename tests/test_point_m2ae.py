"""Point-M2AE hierarchy, masking, encoder/decoder and classifier."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pointlift.errors import PointliftConfigError
from pointlift.models.point_m2ae import (
    PointM2AE, PointM2AEClassifier, PointM2AEConfig, PointM2AEEncoder, count_parameters, global_feature,
    group_hierarchy, propagate_visibility, random_top_mask)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


TINY = PointM2AEConfig(num_points=256, num_centers=(64, 32, 16), group_sizes=(8, 8, 4),
                       encoder_dims=(32, 64, 128), encoder_depths=(1, 1, 1), num_heads=4,
                       embed_hidden=16, decoder_dims=(128, 64), decoder_depths=(1, 1), drop_path=0.0)


def test_hierarchy_structure():
    points = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(0))
    h = group_hierarchy(points, TINY.num_centers, TINY.group_sizes)
    previous = points
    for s, (n, k) in enumerate(zip(TINY.num_centers, TINY.group_sizes)):
        assert h.centers[s].shape == (2, n, 3) and h.neighbors[s].shape == (2, n, k)
        for b in range(2):
            # Centres are a subset of the previous level (FPS on it) and their own nearest member.
            d = torch.cdist(h.centers[s][b], previous[b], compute_mode="donot_use_mm_for_euclid_dist")
            assert torch.allclose(d.min(dim=1).values, torch.zeros(n), atol=1e-6)
            assert torch.equal(h.neighbors[s][b, :, 0], d.argmin(dim=1))
            members = previous[b][h.neighbors[s][b]]
            assert torch.allclose(h.relative[s][b], members - h.centers[s][b][:, None], atol=1e-6)
        previous = h.centers[s]


def test_random_top_mask_counts_and_seed():
    mask = random_top_mask(5, 64, 0.8, torch.Generator().manual_seed(3))
    assert mask.shape == (5, 64) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [64 - int(0.8 * 64)] * 5
    assert torch.equal(mask, random_top_mask(5, 64, 0.8, torch.Generator().manual_seed(3)))
    with pytest.raises(PointliftConfigError):
        random_top_mask(1, 4, 1.0)


def test_propagate_visibility_matches_slow_loop():
    gen = torch.Generator().manual_seed(1)
    h = group_hierarchy(torch.rand(3, 256, 3, generator=gen), TINY.num_centers, TINY.group_sizes)
    top = random_top_mask(3, 16, 0.75, gen)
    masks = propagate_visibility(h, top)
    assert torch.equal(masks[2], top)
    for s in (2, 1):
        for b in range(3):
            expected = [False] * h.centers[s - 1].shape[1]
            for parent in range(h.centers[s].shape[1]):
                if masks[s][b, parent]:
                    for child in h.neighbors[s][b, parent].tolist():
                        expected[child] = True
            assert masks[s - 1][b].tolist() == expected
    assert 0 < int(masks[0].sum()) < masks[0].numel()


@pytest.mark.parametrize("device", DEVICES)
def test_masked_tokens_are_not_attended(device):
    """Visible outputs do not change whatever the masked tokens' inputs are."""
    torch.manual_seed(0)
    encoder = PointM2AEEncoder(TINY).to(device).eval()
    points = torch.rand(2, 256, 3, device=device)
    h = encoder.group(points)
    masks = propagate_visibility(h, random_top_mask(2, 16, 0.75, device=device))
    with torch.no_grad():
        before = encoder(h, masks)
        full_before = encoder(h)
        for s in range(3):
            hidden = ~masks[s]
            h.relative[s][hidden] = torch.randn_like(h.relative[s][hidden]) * 5
            h.centers[s][hidden] = torch.randn_like(h.centers[s][hidden]) * 5
        after = encoder(h, masks)
        full_after = encoder(h)
    for s in range(3):
        visible = masks[s]
        assert torch.allclose(before[s][visible], after[s][visible], atol=1e-5)
        assert torch.all(after[s][~visible] == 0)
        # Without a mask the same perturbation does reach the visible tokens (the test can fail).
        assert not torch.allclose(full_before[s][visible], full_after[s][visible], atol=1e-3)


def test_masked_encoding_of_all_visible_equals_unmasked():
    torch.manual_seed(0)
    encoder = PointM2AEEncoder(TINY).eval()
    h = encoder.group(torch.rand(2, 256, 3))
    masks = [torch.ones(2, n, dtype=torch.bool) for n in TINY.num_centers]
    with torch.no_grad():
        for masked, full in zip(encoder(h, masks), encoder(h)):
            assert torch.allclose(masked, full, atol=1e-5)


def test_paper_config_parameter_count():
    model = PointM2AE(PointM2AEConfig())
    count = count_parameters(model)
    print(f"Point-M2AE paper config: {count / 1e6:.2f} M parameters")
    assert abs(count - 15e6) < 0.1 * 15e6


def test_small_config_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    config = dataclasses.replace(PointM2AEConfig.small(), drop_path=0.0)
    model = PointM2AE(config).train()
    h = model.group(torch.rand(2, config.num_points, 3))
    encoded, decoded, masks = model(h, random_top_mask(2, config.num_centers[-1], 0.8))
    assert [e.shape for e in encoded] == [(2, n, c) for n, c in zip(config.num_centers, config.encoder_dims)]
    assert decoded[2].shape == (2, 32, 256) and decoded[1].shape == (2, 64, 128)
    loss = sum(d.pow(2).mean() for d in decoded.values()) + encoded[0].mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_config_validation():
    with pytest.raises(PointliftConfigError):
        PointM2AEConfig(encoder_dims=(96, 192))
    with pytest.raises(PointliftConfigError):
        PointM2AEConfig(encoder_dims=(100, 192, 384))
    with pytest.raises(PointliftConfigError):
        global_feature(torch.zeros(1, 2, 3), "sum")


CLASSIFY = dataclasses.replace(TINY, num_points=128, num_centers=(32, 16, 8), group_sizes=(8, 8, 4), embed_hidden=8)


def synthetic_shapes(n, gen, num_points=128):
    """Surface samples of spheres (label 0) and cubes (label 1), randomly scaled."""
    labels = torch.arange(n) % 2
    directions = torch.randn(n, num_points, 3, generator=gen)
    sphere = directions / directions.norm(dim=-1, keepdim=True)
    cube = torch.rand(n, num_points, 3, generator=gen) * 2 - 1
    face_axis = torch.randint(0, 3, (n, num_points), generator=gen)
    cube.scatter_(2, face_axis[..., None], torch.sign(torch.randn(n, num_points, 1, generator=gen)))
    points = torch.where(labels[:, None, None] == 0, sphere, cube)
    return points * (0.4 + 0.2 * torch.rand(n, 1, 1, generator=gen)), labels


def test_tiny_classification_loss_falls():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = PointM2AEClassifier(2, CLASSIFY, hidden=64, dropout=0.0)
    test_points, test_labels = synthetic_shapes(32, gen)
    assert model.embed(test_points).shape == (32, 128)
    assert model.embed(test_points, "mean_max").shape == (32, 256)

    def evaluate():
        model.eval()
        with torch.no_grad():
            logits = model(test_points)
        model.train()
        loss = torch.nn.functional.cross_entropy(logits, test_labels)
        return float(loss), float((logits.argmax(1) == test_labels).float().mean())

    start_loss, _ = evaluate()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(30):
        points, labels = synthetic_shapes(16, gen)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(points), labels).backward()
        optimizer.step()
    end_loss, accuracy = evaluate()
    assert end_loss < 0.6 * start_loss
    assert accuracy >= 0.85
