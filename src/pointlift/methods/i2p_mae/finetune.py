"""Shape classification from an I2P-MAE pretraining checkpoint (`pointlift finetune i2p-mae`).

The encoder is the pretraining checkpoint's network (`embedder.build_embedder`) with its weights. On top sits the classification head of
Point-M2AE's fine-tuning (which I2P-MAE reuses): LayerNorm of the top-scale tokens, concat(mean,
max) pooling, then Linear(2C, 256)-BN-ReLU-Dropout(0.5)-Linear(256, 256)-BN-ReLU-Dropout(0.5)-
Linear(256, classes). Defaults follow the paper's fine-tuning recipe as published (AdamW 5e-4,
weight decay 0.05, cosine over 300 epochs with 10 warm-up epochs, batch 32, per-axis scale
U(2/3, 3/2) and translation ±0.2); they are not checked against a run of the released code.

Reported accuracy is the last epoch's (the released code keeps the best *test* epoch; we never
select on the test split). `val_per_class` carves a validation set from the training split for
curves and choices. `init: scratch` trains the same architecture from random weights: the
baseline the pretrained encoder has to beat.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pointlift.data.shape_sets import ShapeSetConfig, load_points
from pointlift.engine.config import InputPathStr, OptimConfig, TrainConfig, config_to_dict, require
from pointlift.engine.device import resolve_device
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.methods.i2p_mae.embedder import build_embedder as build_pretraining_embedder
from pointlift.metrics import accuracy_metrics

KIND = "i2p_mae_classifier"
PRETRAINING_KINDS = ("i2p_mae",)
# Where a checkpoint of another kind goes instead (the refusal names it).
WRONG_KIND_HINTS = {
    "image2point": "fine-tune Image2Point networks with `pointlift finetune image2point`",
    "ppkt": "PPKT pretrains a scene-level sparse U-Net, not a shape encoder; probe it with "
            "`pointlift eval svm` or `pointlift eval ppkt`",
    KIND: "this is already a fine-tuned classifier; fine-tune from its pretraining checkpoint",
}


@dataclass
class HeadConfig:
    """The classification head on the pooled tokens."""

    hidden: int = 256  # width of the head's hidden layers
    dropout: float = 0.5  # dropout between the head's layers


@dataclass
class AugmentConfig:
    """Training augmentation (per-axis scale, then translation), as Point-BERT-style fine-tuning does."""

    scale_range: tuple[float, float] = (2.0 / 3.0, 1.5)  # [low, high] of the random per-axis scale
    translate: float = 0.2  # maximum random translation

    def __post_init__(self):
        require(0 < self.scale_range[0] <= self.scale_range[1], "scale_range", "need 0 < low <= high")
        require(self.translate >= 0, "translate", "must be >= 0")


@dataclass
class PointFinetuneConfig:
    """One YAML file per fine-tuning run (`pointlift finetune i2p-mae --config FILE`)."""

    name: str = "i2p_mae_finetune"  # run directories are <run_root>/<name>-<time>
    checkpoint: InputPathStr = ""  # the I2P-MAE pretraining checkpoint (a run directory or .../checkpoints/last)
    init: Literal["pretrained", "scratch"] = "pretrained"  # scratch: same architecture, random weights
    data: ShapeSetConfig = field(default_factory=lambda: ShapeSetConfig(num_points=2048))  # the labelled shapes
    val_per_class: Optional[int] = None  # validation shapes per class, carved from train (seeded)
    head: HeadConfig = field(default_factory=HeadConfig)  # the classification head
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training augmentation
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # the training loop (this recipe's defaults)
        epochs=300, batch_size=32, optim=OptimConfig(name="adamw", lr=5e-4, weight_decay=0.05, warmup_epochs=10)))
    eval_batch_size: int = 64  # shapes per evaluation batch
    device: Optional[str] = None  # cpu, cuda, cuda:1 ... (null = cuda if available)
    run_root: str = "runs"  # folder of run directories (relative to the current directory)

    def __post_init__(self):
        require(bool(self.checkpoint), "checkpoint", "name the I2P-MAE pretraining checkpoint to fine-tune")
        require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        require(self.val_per_class is None or self.val_per_class >= 1, "val_per_class", "must be >= 1 or null")
        require(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")


# ----------------------------------------------------------------------------------------- model


class TokenEncoder(nn.Module):
    """points (B, P, 3) -> top-scale tokens (B, T, C) of a hierarchical (Point-M2AE) encoder."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        # Every token visible; the top scale's rows before the encoder's LayerNorm (the classifier
        # applies its own `norm`, as the fine-tuning network of Point-M2AE / I2P-MAE does).
        return self.encoder(self.encoder.group(points)).pre_norm[-1]


def token_encoder_from(embedder: nn.Module, source: str = "<checkpoint>") -> nn.Module:
    """The token encoder inside a pretraining embedder: its `token_encoder()` if it offers one, else
    `embedder.encoder` with `.group(points)` and `forward(hierarchy).pre_norm[-1]` (I2P-MAE)."""
    if hasattr(embedder, "token_encoder"):
        return embedder.token_encoder()
    encoder = getattr(embedder, "encoder", None)
    if encoder is None or not hasattr(encoder, "group"):
        raise PointliftConfigError(f"{source}: this network has no point-token encoder to fine-tune")
    return TokenEncoder(encoder)


class PointClassifier(nn.Module):
    """Token encoder -> LayerNorm -> concat(mean, max) -> MLP head (Point-M2AE's classification head)."""

    def __init__(self, encoder: nn.Module, width: int, num_classes: int, head: HeadConfig,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.norm = nn.LayerNorm(width)
        self.head = nn.Sequential(
            nn.Linear(2 * width, head.hidden), nn.BatchNorm1d(head.hidden), nn.ReLU(inplace=True),
            nn.Dropout(head.dropout),
            nn.Linear(head.hidden, head.hidden), nn.BatchNorm1d(head.hidden), nn.ReLU(inplace=True),
            nn.Dropout(head.dropout),
            nn.Linear(head.hidden, num_classes))
        self.label_smoothing = label_smoothing

    def tokens(self, points: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(points.float()))

    def logits(self, points: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(points)
        return self.head(torch.cat([tokens.mean(dim=1), tokens.max(dim=1).values], dim=-1))

    def forward(self, batch: dict) -> dict:
        logits = self.logits(batch["points"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(dim=-1) == batch["label"]).float().mean()
        return {"loss": loss, "train_acc": accuracy.detach()}

    @torch.no_grad()
    def embed(self, points: torch.Tensor) -> torch.Tensor:
        """Max-pooled normalised top tokens (B, C): the frozen-feature view of the fine-tuned encoder."""
        return self.tokens(points).max(dim=1).values


def _token_width(encoder: nn.Module, num_points: int) -> int:
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        width = int(encoder(torch.randn(2, num_points, 3)).shape[-1])
    encoder.train(was_training)
    return width


def build_classifier(encoder_spec: dict, num_classes: int, head: HeadConfig, num_points: int,
                     label_smoothing: float = 0.0, encoder_state: dict | None = None,
                     source: str = "<checkpoint>") -> PointClassifier:
    """The classifier around the encoder of a pretraining `model_spec` (weights loaded when given)."""
    from pointlift.engine.checkpoint import excluded_prefixes

    if not isinstance(encoder_spec, dict) or encoder_spec.get("kind") not in PRETRAINING_KINDS:
        raise PointliftDataError(source, f"the encoder must come from an I2P-MAE pretraining checkpoint, "
                                         f"not a {(encoder_spec or {}).get('kind')!r} one")
    embedder = build_pretraining_embedder(encoder_spec.get("config", {}))
    encoder = token_encoder_from(embedder, source)
    if encoder_state is not None:
        missing = embedder.load_state_dict(encoder_state, strict=False).missing_keys
        missing = [k for k in missing if not k.startswith(excluded_prefixes(embedder))]
        if missing:
            raise PointliftDataError(source, f"checkpoint lacks weights the encoder needs: {missing[:5]}")
    try:
        width = _token_width(encoder, num_points)
    except (RuntimeError, IndexError, ValueError) as error:
        raise PointliftConfigError(f"data.num_points={num_points} does not fit the encoder of {source} "
                                   f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") \
            from None
    return PointClassifier(encoder, width, num_classes, head, label_smoothing)


def classifier_spec(encoder_spec: dict, num_classes: int, head: HeadConfig, num_points: int) -> dict:
    return {"kind": KIND, "config": {"encoder_spec": encoder_spec, "num_classes": num_classes,
                                     "head": asdict(head), "num_points": num_points}}


def build_embedder(config: dict) -> PointClassifier:
    """Registry hook: a fine-tuned classifier from its checkpoint's model_spec config (weights by the caller)."""
    return build_classifier(config["encoder_spec"], int(config["num_classes"]), HeadConfig(**config.get("head", {})),
                            int(config.get("num_points", 1024)))


# ----------------------------------------------------------------------------------------- data


class ClassificationShapes(torch.utils.data.Dataset):
    """Prepared point sets (S, P, 3) with labels; training items are scaled per axis and translated."""

    def __init__(self, points: np.ndarray, labels: np.ndarray, augment: AugmentConfig | None = None):
        self.points = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        points = self.points[index]
        if self.augment is not None:
            low, high = self.augment.scale_range
            scale = low + (high - low) * torch.rand(1, 3)
            shift = (torch.rand(1, 3) * 2 - 1) * self.augment.translate
            points = points * scale + shift
        return {"points": points, "label": self.labels[index]}


def split_validation(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): `per_class` shapes of each class held out, seeded; every class
    keeps at least one training shape."""
    rng = np.random.default_rng(seed)
    val = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = min(per_class, len(members) - 1)
        if take > 0:
            val.append(rng.choice(members, take, replace=False))
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), val), val


@torch.no_grad()
def accuracy(model: PointClassifier, points: np.ndarray, labels: np.ndarray, batch_size: int, device,
             num_classes: int) -> dict:
    """Overall and mean-class accuracy (eval mode; the previous mode is restored)."""
    was_training = model.training
    model.eval()
    predictions = []
    for start in range(0, len(points), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(points[start:start + batch_size])).to(device)
        predictions.append(model.logits(batch).argmax(dim=-1).cpu().numpy())
    model.train(was_training)
    predictions = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    return accuracy_metrics(predictions, labels, num_classes)


# ----------------------------------------------------------------------------------------- training


def pretraining_checkpoint(path) -> tuple[dict, dict, Path]:
    """(state, sidecar, path) of an I2P-MAE pretraining checkpoint; another kind is a one-line error
    that says where such a checkpoint goes instead."""
    from pointlift.engine.checkpoint import (check_kind, checkpoint_kind, load_checkpoint, read_checkpoint_meta,
                                             resolve_checkpoint)
    path = resolve_checkpoint(Path(path).expanduser())
    meta = read_checkpoint_meta(path)
    hint = WRONG_KIND_HINTS.get(checkpoint_kind(meta), "unknown kind")
    check_kind(path, meta, PRETRAINING_KINDS, f"finetune i2p-mae needs an I2P-MAE pretraining checkpoint; {hint}")
    state, meta = load_checkpoint(path)
    return state, meta, path


def finetune(config: PointFinetuneConfig, run_dir: str | Path, *, resume: bool = False,
             progress: bool = True) -> dict:
    """Fine-tune and evaluate the last epoch on the test split; returns (and writes) the summary."""
    from pointlift.engine.trainer import train

    start = time.perf_counter()
    state, meta, checkpoint = pretraining_checkpoint(config.checkpoint)
    encoder_spec = meta["model_spec"]
    device = resolve_device(config.device)
    train_points, train_labels, class_names = load_points(config.data, "train")
    test_points, test_labels, _ = load_points(config.data, "test")
    val_points = val_labels = None
    if config.val_per_class is not None:
        keep, held = split_validation(train_labels, config.val_per_class, config.data.seed)
        val_points, val_labels = train_points[held], train_labels[held]
        train_points, train_labels = train_points[keep], train_labels[keep]
    num_classes = len(class_names)
    torch.manual_seed(config.train.seed)
    model = build_classifier(encoder_spec, num_classes, config.head, config.data.num_points, config.label_smoothing,
                             encoder_state=state if config.init == "pretrained" else None, source=str(checkpoint))
    spec = classifier_spec(encoder_spec, num_classes, config.head, config.data.num_points)

    def eval_fn(module, epoch):
        return accuracy(module, val_points, val_labels, config.eval_batch_size, device, num_classes) \
            if val_points is not None else {}

    dataset = ClassificationShapes(train_points, train_labels, config.augment)
    result = train(model, dataset, config.train, run_dir, resume=resume, device=device, progress=progress,
                   eval_fn=eval_fn if val_points is not None else None,
                   config_for_checkpoint=config_to_dict(config), model_spec=spec)
    model.to(device)
    test = accuracy(model, test_points, test_labels, config.eval_batch_size, device, num_classes)
    losses = [row["loss"] for row in result.history if "loss" in row]
    summary = {"overall_acc": test["overall_acc"], "mean_class_acc": test["mean_class_acc"],
               "selected_on": "last epoch (no selection on the test split)",
               "val": accuracy(model, val_points, val_labels, config.eval_batch_size, device, num_classes)
               if val_points is not None else None,
               "init": config.init, "pretraining_checkpoint": str(checkpoint), "checkpoint": str(result.checkpoint_path),
               "steps": result.step, "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None, "num_classes": num_classes,
               "train_shapes": int(len(train_labels)), "val_shapes": int(len(val_labels)) if val_labels is not None else 0,
               "test_shapes": int(len(test_labels)), "seconds": round(time.perf_counter() - start, 3)}
    from pointlift.engine.rundir import write_json

    write_json(Path(run_dir) / "results.json", summary, allow_nan=True)  # every rank evaluates; rank 0 writes
    return summary


def check_pretraining_checkpoint(config: PointFinetuneConfig) -> None:
    """Refuse a checkpoint of the wrong kind before a run directory exists."""
    pretraining_checkpoint(config.checkpoint)


def summary_line(summary: dict, run_dir: Path) -> str:
    """What `pointlift finetune i2p-mae` prints when the run ends."""
    return (f"[i2p-mae finetune] test accuracy {summary['overall_acc']:.4f}, "
            f"mean-class {summary['mean_class_acc']:.4f} (last epoch, init {summary['init']}) -> {run_dir}")
