"""The Python API a timm user would guess: `pointlift.create_model`, `pointlift.load`, `list_models`; and the
README's example, run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import pointlift
import run_configs
from pointlift.cli import main
from pointlift.errors import PointliftError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_as_written():
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["logits"].shape == (2, 10)
    assert namespace["features"].shape[0] == 2


@pytest.mark.parametrize("name, settings", [("ppkt", {"student": "spunet-tiny", "voxel_size": 0.1}),
                                            ("image2point", {"teacher": "resnet18", "voxel_size": 0.1})])
def test_create_model_features_head_and_gradients(name, settings):
    torch.manual_seed(0)
    model = pointlift.create_model(name, num_classes=4, **settings)
    points = torch.rand(2, 300, 3)
    assert model.forward_features(points).shape == (2, model.num_features)
    logits = model(points)
    assert logits.shape == (2, 4)
    logits.sum().backward()  # the backbone trains through the API, not only the head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.network.parameters())
    model.reset_classifier(0)
    assert model(points).shape == (2, model.num_features)


def test_create_model_refuses_unknown_names_and_settings():
    with pytest.raises(ValueError, match="choose from"):
        pointlift.create_model("pointnet")
    with pytest.raises(PointliftError, match="unknown"):
        pointlift.create_model("image2point", teacher="resnet18", nonsense=1)
    with pytest.raises(PointliftError, match="unknown key"):
        pointlift.create_model("ppkt", nonsense=1)


def test_load_gives_the_checkpoint_network_with_its_weights(tmp_path):
    """A trained checkpoint loads with its weights: the same features `pointlift embed` computes."""
    from pointlift.features.embed import load_embedder

    path = run_configs.write(run_configs.i2p_mae_config(tmp_path), tmp_path / "config.yaml")
    assert main(["pretrain", "i2p-mae", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    model = pointlift.load(tmp_path / "run", num_classes=3).eval()
    reference, _ = load_embedder(tmp_path / "run")
    points = torch.rand(2, 128, 3)
    with torch.no_grad():
        assert torch.equal(model.forward_features(points), reference.embed(points))
        assert model(points).shape == (2, 3)
    assert model.kind == "i2p_mae"
