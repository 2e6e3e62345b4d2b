"""FIP, the paper's "fine-tuning image-pretrained" modes: which layers of the inflated network train.

`io`: only the input layer (stem conv + its BN) and the output layer (classifier) train, everything inside
is frozen *including* its BN running statistics; `ioms`: as io but the BN running statistics update;
`iobn`: all conv kernels frozen except the io layers, every BN affine trains (statistics update);
`all`: full fine-tuning.
"""

from __future__ import annotations

from torch import nn

from pointlift.errors import PointliftConfigError
from pointlift.methods.image2point.config import FIP_MODES
from pointlift.sparse import SparseBatchNorm, SparseConv3d, SubMConv3d
from pointlift.tasks.shape_classification.train import SparseShapeClassifier


def _input_output_layers(net: nn.Module) -> tuple[str, ...]:
    """Names of the input layer (stem conv and its norm) and the output layer (the classifier, with its
    BatchNorm1d in the released head); every module inside them counts as input/output layer."""
    if hasattr(net, "io_prefixes"):
        return tuple(net.io_prefixes)
    modules = list(net.named_modules())
    first_conv = next(n for n, m in modules if isinstance(m, (SubMConv3d, SparseConv3d)))
    first_norm = next(n for n, m in modules if isinstance(m, SparseBatchNorm))
    classifier = net.get_classifier()
    head = [n for n, m in modules if m is classifier]
    return (first_conv, first_norm, *head)


def apply_fip(model: SparseShapeClassifier, fip: str) -> dict[str, int]:
    """Set requires_grad and the frozen-statistics norms for an FIP mode; returns parameter counts.

    Released semantics (tests/test_image2point_reference.py against fip.json): the input (stem conv + BN)
    and output (classifier) layers always train; `io` freezes everything else and puts every other BN in
    eval mode (its running statistics neither used from the batch nor updated); `ioms` the same trainable
    set with every BN in train mode; `iobn` also trains every BN's affine; `all` trains everything."""
    if fip not in FIP_MODES:
        raise PointliftConfigError(f"fip must be one of {FIP_MODES}, got {fip!r}")
    net = model.backbone
    prefixes = _input_output_layers(net)

    def is_io(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    frozen_norms = []
    for name, module in net.named_modules():
        own = list(module.parameters(recurse=False))
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if fip == "all" or is_io(name):
            trainable = True
        elif fip == "iobn":
            trainable = is_norm
        else:  # io, ioms
            trainable = False
        for p in own:
            p.requires_grad_(trainable)
        if fip == "io" and is_norm and not is_io(name):
            frozen_norms.append(name)
    model.frozen_norms = tuple(frozen_norms)
    model.train(model.training)
    total = sum(p.numel() for p in model.parameters())
    trainable_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable_count, "total_params": total, "frozen_bn_layers": len(frozen_norms)}
