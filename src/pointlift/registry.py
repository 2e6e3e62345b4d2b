"""The one table of pointlift's methods: every lookup by command-line name or checkpoint kind goes through it.

A `Method` is one kind of network a checkpoint can hold (`model_spec.kind`), with what can be done with it:
the command that trains it (`pointlift pretrain|finetune NAME`), its typed config, the library function that
trains it, how a checkpoint's `model_spec` rebuilds its network, its quickstart demo and its benchmark.
`BENCHMARKS` lists `pointlift bench NAME` (one per method, plus the sparse-convolution engine). The imports
are explicit, so the import graph shows everything the CLI, `pointlift.load`, the quickstart and the
benchmarks can reach; the parser (`pointlift.cli`) names the same choices without importing this table, and
tests/test_registry.py holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from torch import nn

from pointlift.bench import i2p_mae as bench_i2p_mae
from pointlift.bench import i2p_mae_budget as bench_i2p_mae_budget
from pointlift.bench import image2point as bench_image2point
from pointlift.bench import image2point_fewshot as bench_image2point_fewshot
from pointlift.bench import ppkt as bench_ppkt
from pointlift.bench import segmentation as bench_segmentation
from pointlift.bench import sparse as bench_sparse
from pointlift.errors import PointliftDataError
from pointlift.methods.i2p_mae import config as i2p_mae_config
from pointlift.methods.i2p_mae import embedder as i2p_mae_embedder
from pointlift.methods.i2p_mae import finetune as i2p_mae_finetune
from pointlift.methods.i2p_mae import pretrain as i2p_mae_pretrain
from pointlift.methods.image2point import config as image2point_config
from pointlift.methods.image2point import embedder as image2point_embedder
from pointlift.methods.image2point import finetune as image2point_finetune
from pointlift.methods.ppkt import config as ppkt_config
from pointlift.methods.ppkt import embedder as ppkt_embedder
from pointlift.methods.ppkt import pretrain as ppkt_pretrain
from pointlift.quickstart import i2p_mae as quickstart_i2p_mae
from pointlift.quickstart import image2point as quickstart_image2point
from pointlift.quickstart import ppkt as quickstart_ppkt
from pointlift.quickstart import segmentation as quickstart_segmentation
from pointlift.tasks.segmentation import config as segmentation_config
from pointlift.tasks.segmentation import finetune as segmentation_finetune


@dataclass(frozen=True)
class Method:
    """One kind of pointlift network and what can be done with it (None: not available for this kind)."""

    kind: str  # `model_spec.kind` in its checkpoints
    title: str
    verb: Optional[str] = None  # "pretrain" | "finetune": the command that trains it ...
    name: Optional[str] = None  # ... under this name
    config: Optional[type] = None  # the typed config that command loads
    train: Optional[Callable] = None  # (config, run_dir, *, resume) -> summary dict
    summary_line: Optional[Callable[[dict, Path], str]] = None  # the line printed when training ends
    run_name: Optional[str] = None  # run directories are <run_root>/<run_name or config.name>-<time>
    check: Optional[Callable] = None  # config -> None, raises before a run directory exists
    build_embedder: Optional[Callable[[dict], nn.Module]] = None  # model_spec config -> module with .embed
    quickstart: Optional[Callable] = None  # (run_dir, progress) -> {"figures", "plots"}
    quickstart_title: Optional[str] = None
    writes_report: bool = False  # its `train` writes report.md itself; otherwise the command writes a generic one


METHODS = (
    Method("image2point", "Image2Point", "finetune", "image2point", image2point_config.Image2PointConfig,
           image2point_finetune.finetune, image2point_finetune.summary_line,
           build_embedder=image2point_embedder.build_embedder, quickstart=quickstart_image2point.quickstart,
           quickstart_title="Image2Point: inflated 2D ConvNet vs random init"),
    Method("ppkt", "PPKT", "pretrain", "ppkt", ppkt_config.PPKTConfig, ppkt_pretrain.pretrain,
           ppkt_pretrain.summary_line, run_name="ppkt", build_embedder=ppkt_embedder.build_embedder,
           quickstart=quickstart_ppkt.quickstart,
           quickstart_title="PPKT: pixel-to-point contrastive pretraining vs untrained"),
    Method("i2p_mae", "I2P-MAE", "pretrain", "i2p-mae", i2p_mae_config.I2PMAEExperiment,
           i2p_mae_pretrain.pretrain_with_summary, i2p_mae_pretrain.summary_line,
           build_embedder=i2p_mae_embedder.build_embedder, quickstart=quickstart_i2p_mae.quickstart,
           quickstart_title="I2P-MAE: 2D-guided masked autoencoding vs random init"),
    Method("i2p_mae_classifier", "I2P-MAE fine-tuned classifier", "finetune", "i2p-mae",
           i2p_mae_finetune.PointFinetuneConfig, i2p_mae_finetune.finetune,
           i2p_mae_finetune.summary_line, check=i2p_mae_finetune.check_pretraining_checkpoint,
           build_embedder=i2p_mae_finetune.build_embedder),
    Method("segmentation", "Scene segmentation", "finetune", "segmentation",
           segmentation_config.SegmentationConfig, segmentation_finetune.finetune,
           segmentation_finetune.summary_line, quickstart=quickstart_segmentation.quickstart,
           quickstart_title="Scene segmentation: sparse U-Net fine-tuned vs untrained", writes_report=True),
)

# `pointlift bench NAME` -> its module: `run(preset, out_dir[, resume]) -> BenchResult` and its typed
# `PRESETS` table; `bench all` runs them in this order.
BENCHMARKS = {
    "sparse": bench_sparse,
    "image2point": bench_image2point,
    "image2point-fewshot": bench_image2point_fewshot,
    "ppkt": bench_ppkt,
    "i2p-mae": bench_i2p_mae,
    "i2p-mae-budget": bench_i2p_mae_budget,
    "segmentation": bench_segmentation,
}


def trainer(verb: str, name: str) -> Method:
    """The method `pointlift VERB NAME` trains."""
    for method in METHODS:
        if method.verb == verb and method.name == name:
            return method
    raise KeyError(f"no `pointlift {verb} {name}`; known: {[m.name for m in METHODS if m.verb == verb]}")


def config_kinds() -> dict[str, Method]:
    """`pointlift config show KIND`: each training command's config by its method name, or `NAME-VERB` where
    one name is trained by two commands (i2p-mae-pretrain, i2p-mae-finetune)."""
    trained = [m for m in METHODS if m.config is not None]
    names = [m.name for m in trained]
    return {(m.name if names.count(m.name) == 1 else f"{m.name}-{m.verb}"): m for m in trained}


def by_kind(kind: str) -> Method:
    """The method whose checkpoints carry `model_spec.kind == kind`."""
    for method in METHODS:
        if method.kind == kind:
            return method
    raise KeyError(kind)


def build_embedder(model_spec: dict, source: str = "<checkpoint>") -> nn.Module:
    """The embedding network (`.embed(points (B, P, 3)) -> (B, F)`) a checkpoint's `model_spec` describes,
    freshly initialised; the caller loads the weights."""
    if not isinstance(model_spec, dict) or "kind" not in model_spec:
        raise PointliftDataError(source, "checkpoint has no model_spec; it was not written by a pointlift method")
    kind = model_spec["kind"]
    embeddable = sorted(m.kind for m in METHODS if m.build_embedder is not None)
    try:
        method = by_kind(kind)
    except KeyError:
        raise PointliftDataError(source, f"unknown model kind {kind!r}; known kinds: {embeddable}") from None
    if method.build_embedder is None:
        raise PointliftDataError(source, f"a {kind!r} checkpoint ({method.title}) has no per-shape embedding; "
                                         f"kinds that do: {embeddable}")
    return method.build_embedder(model_spec.get("config", {}))


def quickstart_steps() -> list[Method]:
    """The methods the quickstart runs, in its order."""
    return [m for m in METHODS if m.quickstart is not None]
