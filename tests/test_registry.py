"""The one method registry: the parser's choices are the registry's names, every method's pieces exist, and
every embedder the registry names rebuilds a network whose `.embed` gives one row per point set."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pointlift import cli, registry

SRC = Path(__file__).resolve().parents[1] / "src" / "pointlift"


def test_the_parser_offers_exactly_the_registry_names():
    assert set(cli.PRETRAIN_METHODS) == {m.name for m in registry.METHODS if m.verb == "pretrain"}
    assert set(cli.FINETUNE_METHODS) == {m.name for m in registry.METHODS if m.verb == "finetune"}
    assert tuple(cli.BENCHMARK_NAMES) == tuple(registry.BENCHMARKS)


def test_every_trainable_method_is_complete():
    for method in registry.METHODS:
        if method.verb is None:
            continue
        assert method.config is not None and callable(method.train) and callable(method.summary_line), method.kind
        assert registry.trainer(method.verb, method.name) is method
    with pytest.raises(KeyError, match="known"):
        registry.trainer("pretrain", "nonsense")


def test_no_string_keyed_import_of_project_modules():
    """importlib / __import__ on project modules would hide a dependency from the import graph."""
    offenders = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in ("import_module", "__import__") and node.args and _names_project(node.args[0]):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders


def _names_project(arg) -> bool:
    """A module-name argument that is, or may be, a pointlift module (a variable could be anything)."""
    if isinstance(arg, ast.Constant):
        return str(arg.value).startswith("pointlift")
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).startswith("pointlift")
    return True


@pytest.mark.parametrize("spec", [
    {"kind": "ppkt", "config": {"model": {"student": "spunet-tiny", "voxel_size": 0.2}}},
    {"kind": "image2point", "config": {"teacher": "resnet18", "design": "released", "pipeline": "released",
                                       "num_classes": 4, "voxel_size": 0.2}},
    {"kind": "i2p_mae", "config": {"model": {"num_points": 128, "num_centers": [32, 16, 8], "group_sizes": [8, 4, 4],
                                             "encoder_dims": [32, 64, 96], "encoder_depths": [1, 1, 1],
                                             "num_heads": 4, "embed_hidden": 8, "decoder_dims": [96, 64],
                                             "decoder_depths": [1, 1]}, "teacher_channels": 16}},
])
def test_registry_embedders_give_one_row_per_point_set(spec):
    torch.manual_seed(0)
    network = registry.build_embedder(spec).eval()
    with torch.no_grad():
        rows = network.embed(torch.rand(3, 256, 3) - 0.5)
    assert rows.shape[0] == 3 and rows.ndim == 2 and torch.isfinite(rows).all()


def test_kinds_without_an_embedder_say_so():
    from pointlift.errors import PointliftDataError

    with pytest.raises(PointliftDataError, match="'segmentation' checkpoint .* has no per-shape embedding"):
        registry.build_embedder({"kind": "segmentation", "config": {}})
    with pytest.raises(PointliftDataError, match="unknown model kind 'nope'"):
        registry.build_embedder({"kind": "nope"})
