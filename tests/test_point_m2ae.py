"""Point-M2AE hierarchy, masking, encoder/decoder and classifier."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pointlift.errors import PointliftConfigError
from pointlift.models.point_m2ae.classifier import PointM2AEClassifier
from pointlift.models.point_m2ae.config import PointM2AEConfig
from pointlift.models.point_m2ae.hierarchy import group_hierarchy, propagate_visibility, random_top_mask
from pointlift.models.point_m2ae.model import PointM2AE, PointM2AEEncoder, count_parameters, global_feature

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


TINY = PointM2AEConfig(num_points=256, num_centers=(64, 32, 16), group_sizes=(8, 8, 4),
                       encoder_dims=(32, 64, 128), encoder_depths=(1, 1, 1), num_heads=4,
                       embed_hidden=16, decoder_dims=(128, 64), decoder_depths=(1, 1), drop_path=0.0, fps_skip=None)


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


def _full(encoded, scale, n):
    return encoded.full(scale, n)


@pytest.mark.parametrize("device", DEVICES)
def test_masked_tokens_are_not_attended(device):
    """Visible outputs do not change whatever the masked tokens' coordinates are (in eval mode, where
    BatchNorm uses running statistics; the released token embedding still embeds masked groups)."""
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
    for s, n in enumerate(TINY.num_centers):
        visible = masks[s]
        a, b = _full(before, s, n), _full(after, s, n)
        assert torch.allclose(a[visible], b[visible], atol=1e-5)
        assert torch.all(b[~visible] == 0)
        # Without a mask the same perturbation does reach the visible tokens (the test can fail).
        fa, fb = _full(full_before, s, n), _full(full_after, s, n)
        assert not torch.allclose(fa[visible], fb[visible], atol=1e-3)


def test_masked_encoding_of_all_visible_equals_unmasked():
    torch.manual_seed(0)
    encoder = PointM2AEEncoder(TINY).eval()
    h = encoder.group(torch.rand(2, 256, 3))
    masks = [torch.ones(2, n, dtype=torch.bool) for n in TINY.num_centers]
    with torch.no_grad():
        for masked, full in zip(encoder(h, masks).tokens, encoder(h).tokens):
            assert torch.allclose(masked, full, atol=1e-5)


def test_paper_config_parameter_count():
    """The released I2P-MAE has 17,622,808 parameters with its heads; the backbone without them:"""
    model = PointM2AE(PointM2AEConfig())
    heads = 192 * 24 + 24 + 192 * 12288 + 12288  # rec_head_3d, rec_head_2d (Conv1d kernel 1)
    assert count_parameters(model) + heads == 17_622_808


def test_small_config_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    config = dataclasses.replace(PointM2AEConfig.small(), drop_path=0.0)
    model = PointM2AE(config).train()
    h = model.group(torch.rand(2, config.num_points, 3))
    encoded, decoded, masks = model(h, random_top_mask(2, config.num_centers[-1], 0.8))
    assert [t.shape[-1] for t in encoded.tokens] == list(config.encoder_dims)
    assert decoded.first.shape == (2, 32, 256) and decoded.final.shape == (2, 64, 128) and decoded.scale == 1
    loss = decoded.final.pow(2).mean() + decoded.first.pow(2).mean() + encoded.tokens[0].mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_one_level_decoder_returns_token_order():
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, decoder_dims=(128,), decoder_depths=(1,))
    model = PointM2AE(config).eval()
    h = model.group(torch.rand(2, 256, 3))
    top = random_top_mask(2, 16, 0.75)
    with torch.no_grad():
        _, decoded, _ = model(h, top)
    assert decoded.scale == 2
    back = torch.zeros_like(decoded.first).scatter(1, decoded.first_order[..., None].expand_as(decoded.first),
                                                   decoded.first)
    torch.testing.assert_close(decoded.final, model.decoder_norm(back))


def test_config_validation():
    with pytest.raises(PointliftConfigError):
        PointM2AEConfig(encoder_dims=(96, 192))
    with pytest.raises(PointliftConfigError):
        PointM2AEConfig(encoder_dims=(100, 192, 384))
    with pytest.raises(PointliftConfigError, match="mirror"):
        PointM2AEConfig(decoder_dims=(384, 96))
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
    assert {"norm.weight", "cls_head_finetune.0.weight", "h_encoder.token_embed.0.first_conv.0.weight"} <= \
        set(model.state_dict())  # the released fine-tuning names

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
    # precise BatchNorm statistics (the released token embedding has BatchNorm): average over batches
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for _ in range(4):
            model(synthetic_shapes(16, gen)[0])
    end_loss, accuracy = evaluate()
    assert end_loss < 0.6 * start_loss
    assert accuracy >= 0.85


def test_knn_orders_equal_distances_by_index():
    """KNN_CUDA's insertion sort keeps the earlier index among equal distances; so does pointlift's knn."""
    from pointlift.ops import knn

    ref = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0], [-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]])
    _, idx = knn(torch.zeros(1, 1, 3), ref, 5)
    assert idx[0, 0].tolist() == [0, 1, 3, 4, 5]
    _, idx = knn(torch.zeros(1, 1, 3), ref.flip(1), 4)
    assert idx[0, 0].tolist() == [0, 1, 2, 4]
