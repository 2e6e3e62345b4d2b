"""Image2Point against the released code's outputs (../shared/reference/image2point, README there).

- inflation: every tensor of the released SPVCNN18_cls, for each released axis option, rebuilt from
  resnet18_2d.safetensors bit-exactly (stored tensors compared, the rest by sha256 in both layouts);
- forward: the released network built from those weights reproduces every stored stage output and the
  logits of forward.npz (sites matched by coordinates, relative to max |ref| of each tensor);
- FIP: the trainable parameters and frozen-statistics BN layers of each mode equal fip.json.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from pointlift.models.image2point_net import (Image2PointResNet, conv3d_to_released, inflate_resnet_state,
                                              load_released_state_dict)
from pointlift.models.inflate import AXES
from pointlift.sparse import SparseConv3d, SparseTensor, SubMConv3d

REF = "reference/image2point"


def _sha(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def reference():
    from conftest import require_shared
    from safetensors.torch import load_file

    root = require_shared(REF)
    return {"resnet": {k: v.float() if v.is_floating_point() else v
                       for k, v in load_file(root / "resnet18_2d.safetensors").items()},
            "inflated": load_file(root / "inflated.safetensors"),
            "layout": json.loads((root / "layout.json").read_text()),
            "forward": dict(np.load(root / "forward.npz")),
            "fip": json.loads((root / "fip.json").read_text())}


def test_axis_options_are_the_released_ones():
    assert AXES == ("z-axis", "y-axis", "x-axis")


@pytest.mark.parametrize("axis", ["z-axis", "x-axis", "y-axis"])
def test_inflation_reproduces_every_released_tensor(reference, axis):
    stages = inflate_resnet_state(reference["resnet"], mode="copy", axis=axis)
    records = reference["layout"]["inflated"]["tensors"][axis]
    stage_records = {k: v for k, v in records.items() if k.startswith("stage")}
    ours = {(k[: -len("weight")] + "kernel" if stages[k].ndim == 5 else k): v for k, v in stages.items()}
    assert set(ours) == set(stage_records)
    for name, record in stage_records.items():
        tensor = ours[name]
        if name.endswith(".kernel"):
            assert list(tensor.shape) == record["conv3d_shape"], name
            assert _sha(tensor) == record["sha256_conv3d"], name
            released = conv3d_to_released(tensor)
        else:
            released = tensor
        assert list(released.shape) == record["shape"], name
        assert _sha(released) == record["sha256"], name
        if record["stored"]:
            assert torch.equal(released, reference["inflated"][f"{axis}/{name}"]), name


def test_released_layout_round_trip_and_model_keys(reference):
    model = Image2PointResNet("resnet18", num_classes=40)
    released_names = set(reference["layout"]["inflated"]["tensors"]["z-axis"])
    ours = {k[: -len("weight")] + "kernel" if v.ndim == 5 else k for k, v in model.state_dict().items()}
    assert ours == released_names
    stem = reference["inflated"]["z-axis/stem.0.kernel"]
    from pointlift.models.image2point_net import released_to_conv3d
    assert torch.equal(conv3d_to_released(released_to_conv3d(stem)), stem)


def _released_model(reference) -> Image2PointResNet:
    model = Image2PointResNet("resnet18", in_channels=3, num_classes=40)
    state = {k.split("/", 1)[1]: v for k, v in reference["inflated"].items() if k.startswith("z-axis/")}
    ours = inflate_resnet_state(reference["resnet"], mode="copy", axis="z-axis")
    load_released_state_dict(model, {k: v for k, v in state.items()}, strict=False)
    missing = set(model.state_dict()) - set(ours) - {k[: -len("kernel")] + "weight" if k.endswith("kernel") else k
                                                       for k in state}
    assert not missing
    model.load_state_dict(ours, strict=False)
    return model.eval()


def _by_coords(coords: np.ndarray, feats: np.ndarray, stride: int) -> dict:
    """Released coords [x, y, z, b] in level-0 units -> {(b, x/s, y/s, z/s): row}."""
    keys = [(int(c[3]), int(c[0]) // stride, int(c[1]) // stride, int(c[2]) // stride) for c in coords]
    return dict(zip(keys, feats))


def _compare(name: str, ours: SparseTensor, ref: dict, stride: int) -> None:
    expected = _by_coords(ref[f"{name}/coords"], ref[f"{name}/feats"], stride)
    got = {tuple(int(v) for v in c): f for c, f in zip(ours.coords, ours.features.detach().numpy())}
    assert set(got) == set(expected), name
    keys = sorted(expected)
    a, b = np.stack([got[k] for k in keys]), np.stack([expected[k] for k in keys])
    scale = np.abs(b).max()
    assert np.abs(a - b).max() <= 1e-5 * scale, (name, np.abs(a - b).max() / scale)


def test_forward_reproduces_released_stage_outputs_and_logits(reference):
    ref = reference["forward"]
    model = _released_model(reference)
    coords = ref["input_coords"]
    x = SparseTensor(torch.from_numpy(ref["input_feats"]),
                     torch.from_numpy(np.stack([coords[:, 3], coords[:, 0], coords[:, 1], coords[:, 2]], 1)).long(),
                     batch_size=4)
    with torch.no_grad():
        x = model.stem(x)
        _compare("stem", x, ref, 1)
        for index, stride in zip(range(1, 5), (1, 2, 4, 8)):
            x = getattr(model, f"stage{index}")(x)
            assert x.stride == stride
            _compare(f"stage{index}.1", x, ref, stride)
        pooled = model.forward_head(x, pre_logits=True)
        logits = model.classifier(pooled)
    for name, ours in (("pooled", pooled), ("logits", logits)):
        scale = np.abs(ref[name]).max()
        assert np.abs(ours.numpy() - ref[name]).max() <= 1e-5 * scale, name


@pytest.mark.parametrize("mode", ["io", "ioms", "iobn", "all"])
def test_fip_sets_equal_released(reference, mode):
    from pointlift.methods.image2point.fip import apply_fip
    from pointlift.tasks.shape_classification.train import SparseShapeClassifier

    model = SparseShapeClassifier(Image2PointResNet("resnet18", num_classes=40))
    apply_fip(model, mode)
    model.train()
    expected = reference["fip"]["modes"][mode]

    convs = {n for n, m in model.backbone.named_modules() if isinstance(m, (SubMConv3d, SparseConv3d))}

    def released(name):  # our `<conv>.weight` is the released `<conv>.kernel`
        return name[: -len("weight")] + "kernel" if name.rsplit(".", 1)[0] in convs else name

    trainable = [released(n.removeprefix("backbone.")) for n, p in model.named_parameters() if p.requires_grad]
    frozen = [released(n.removeprefix("backbone.")) for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable == expected["trainable_parameters"]
    assert frozen == expected["frozen_parameters"]
    norms = {n: m for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert sorted(n for n, m in norms.items() if m.training) == sorted(expected["bn_layers_updating_running_stats"])
    assert sorted(n for n, m in norms.items() if not m.training) == sorted(expected["bn_layers_frozen_stats_eval_mode"])


def test_released_pipeline_reproduces_the_reference_input(reference):
    from pointlift.tasks.shape_classification.data import released_voxelize

    ref = reference["forward"]
    coords, feats, index = [], [], []
    for b, cloud in enumerate(ref["points"]):
        c, f, i = released_voxelize(cloud, 0.05)
        coords.append(np.concatenate([c, np.full((len(c), 1), b)], 1))
        feats.append(f)
        index.append(i)
    coords = np.concatenate(coords)
    order = np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0], coords[:, 3]))
    ref_coords = ref["input_coords"].astype(np.int64)
    ref_order = np.lexsort((ref_coords[:, 2], ref_coords[:, 1], ref_coords[:, 0], ref_coords[:, 3]))
    assert np.array_equal(coords[order], ref_coords[ref_order])
    assert np.array_equal(np.concatenate(feats)[order], ref["input_feats"][ref_order])
    assert np.array_equal(np.concatenate(index)[order], ref["input_point_index"][ref_order])


def test_build_network_from_the_weights_file_gives_the_released_stage_tensors(reference, shared):
    """The user path (`inflation.weights` = a 2D ResNet file, read through timm) equals the tested rules."""
    from pointlift.models.image2point_net import build_network

    path = shared(f"{REF}/resnet18_2d.safetensors")
    net, report = build_network("resnet18", str(path), "copy", "z-axis", num_classes=40)
    expected = inflate_resnet_state(reference["resnet"], mode="copy", axis="z-axis")
    state = net.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    assert len(report) == sum(1 for k in reference["resnet"] if k.startswith("layer") and k.endswith("weight"))
