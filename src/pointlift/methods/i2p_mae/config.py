"""I2P-MAE settings: the method (stored as a checkpoint's model_spec), the 2D teacher, the data and one
experiment YAML (configs/i2p_mae_*.yaml). `recipe` fills every option left None: "official" is the
released method, "pointlift" pointlift's own choices (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from pointlift.engine.config import InputPathStr, TrainConfig, config_to_dict, require
from pointlift.models.point_m2ae.config import PointM2AEConfig

KIND = "i2p_mae"

# Settings each recipe gives to the options left unset (None).
RECIPES = {
    "official": dict(masking="released", renderer="released", target_norm="none", recon_weight=1.0,
                     feature_weight=1.0, released_quirks=True),
    "pointlift": dict(masking="standardised", renderer="invariant", target_norm="layer", recon_weight=100.0,
                      feature_weight=1.0, released_quirks=False),
}
DATA_RECIPES = {
    "official": dict(augment="per_axis", scale_range=(2 / 3, 3 / 2), translate=0.2, cache_teacher=False),
    "pointlift": dict(augment="uniform", scale_range=(0.8, 1.25), translate=0.1, cache_teacher=True),
}


@dataclass
class I2PMAEConfig:
    """The method (stored as the checkpoint's model_spec). Options left None take the recipe's value."""

    model: PointM2AEConfig = field(default_factory=PointM2AEConfig)  # the Point-M2AE network's sizes
    recipe: Literal["official", "pointlift"] = "official"  # fills the options left null: released method or pointlift's
    mask_ratio: float = 0.8  # fraction of the top scale's tokens masked
    guided_masking: bool = True  # mask by the 2D teacher's saliency (false = random masking)
    feature_target: bool = True  # also reconstruct the teacher's 2D features of visible tokens
    masking: Optional[Literal["released", "standardised"]] = None  # how saliency turns into a mask (null = recipe)
    temperature: float = 0.5  # masking "standardised" only; lower = greedier
    renderer: Optional[Literal["released", "invariant"]] = None  # depth-map renderer (null = recipe)
    target_norm: Optional[Literal["none", "layer", "layer_batch"]] = None  # 2D target normalisation (null = recipe)
    recon_weight: Optional[float] = None  # weight of the point-reconstruction loss (null = recipe)
    feature_weight: Optional[float] = None  # weight of the 2D-feature loss (null = recipe)
    released_quirks: Optional[bool] = None  # token 0 of cloud 0 visible; ungrouped tokens dropped at eval
    image_size: int = 224  # side of the rendered depth maps fed to the teacher
    footprint: int = 5  # side in pixels of each point's splat in the depth maps (odd)
    teacher_channels: int = 0  # set from the teacher when the model is built
    # True: N torchrun processes take one process's steps (to float rounding): the 3D and 2D losses are
    # means over the global batch's masked / visible tokens (counts all-reduced), drop-path is drawn from
    # each sample's own (seed, epoch, sample) stream, and the released token-0 quirk applies to the global
    # batch's first cloud only (rank 0's). Off (released): each process averages over its own tokens and
    # draws drop-path from its own stream. One process with it on = off bit for bit with drop_path 0
    # (measured); with drop_path > 0 its drops come from the per-sample stream instead.
    # target_norm layer_batch (batch statistics) stays per process either way.
    ddp_equivalent: bool = False

    def __post_init__(self):
        require(self.recipe in RECIPES, "recipe", f"must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        for key, value in RECIPES[self.recipe].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        require(0.0 < self.mask_ratio < 1.0, "mask_ratio", f"must be in (0, 1), got {self.mask_ratio}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.image_size >= 16, "image_size", f"must be >= 16, got {self.image_size}")
        require(self.footprint >= 1 and self.footprint % 2 == 1, "footprint", "must be a positive odd integer")
        require(self.recon_weight >= 0 and self.feature_weight >= 0, "recon_weight", "loss weights must be >= 0")
        require(self.teacher_channels >= 0, "teacher_channels", "must be >= 0")
        require(self.model.num_scales >= 2 or not self.feature_target, "model",
                "the 2D target needs at least two scales (members of the reconstructed tokens)")


@dataclass
class TeacherConfig:
    """The frozen 2D network. The paper's: `vit_base_patch16_clip_224.openai` with `project: true`
    (patch tokens after CLIP's projection, 512-d) - hub weights, needs internet the first time."""

    name: str = "tf_efficientnet_lite0"  # timm model name
    weights: Optional[InputPathStr] = None  # None = bundled (EfficientNet-Lite) or hub; or a local file
    stage: int = -1  # which feature stage of the teacher is the 2D target (-1 = last)
    half: bool = False  # run the teacher in float16 (CUDA)
    project: bool = False  # ViT: apply the model's head (CLIP: visual projection) to every patch token


@dataclass
class DataConfig:
    """Pretraining shapes and augmentation. augment/scale_range/translate/cache_teacher left None take
    the recipe's value: official = per-axis scale U(2/3, 3/2) + translate 0.2, teacher every step;
    pointlift = uniform scale U(0.8, 1.25) + translate 0.1, cached teacher maps."""

    # "synthetic", or any shape set of pointlift.data.shape_sets (format name or "auto")
    format: str = "modelnet10_vox"
    path: InputPathStr = "../shared/data/modelnet10_vox32.npz"  # the shape set (file or folder)
    variant: str = "PB_T50_RS"  # ScanObjectNN file variant (shape_sets)
    columns: Optional[int] = None  # values per point of raw .bin point files (shape_sets)
    num_points: int = 1024  # points per shape
    max_shapes: Optional[int] = None  # first N training shapes only (CPU budgets)
    augment: Optional[Literal["per_axis", "uniform"]] = None  # scaling per axis or uniform (null = recipe)
    scale_range: Optional[tuple[float, float]] = None  # [low, high] of the random scale (null = recipe)
    translate: Optional[float] = None  # maximum random translation (null = recipe)
    cache_teacher: Optional[bool] = None  # compute the teacher's maps once and reuse them (null = recipe)
    cache_dir: Optional[str] = "~/.cache/pointlift/i2p_mae"  # where cached teacher maps go (current directory)
    cache_dtype: Literal["float16", "float32"] = "float16"  # storage type of cached teacher maps
    # pointlift's option for the official recipe on the CPU: render each batch's views and run the teacher in the
    # collate, so a DataLoader worker (train.num_workers > 0) does it beside the training step (the same run)
    teacher_in_loader: bool = False
    seed: int = 0  # seeds each shape's resampling and the augmentation

    def __post_init__(self):
        require(self.num_points >= 1, "num_points", "must be >= 1")
        if self.scale_range is not None:
            require(0 < self.scale_range[0] <= self.scale_range[1], "scale_range", "need 0 < low <= high")
        require(self.translate is None or self.translate >= 0, "translate", "must be >= 0")

        from pointlift.data.shape_sets import FORMATS
        require(self.format in ("synthetic", "auto", *FORMATS), "format",
                f"must be 'synthetic', 'auto' or one of {', '.join(FORMATS)}; got {self.format!r}")

    def resolve(self, recipe: str) -> "DataConfig":
        for key, value in DATA_RECIPES[recipe].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        return self


@dataclass
class I2PMAEExperiment:
    """One YAML file per pretraining experiment (configs/i2p_mae_*.yaml)."""

    name: str = "i2p_mae"  # run directories are <run_root>/<name>-<time>
    method: I2PMAEConfig = field(default_factory=I2PMAEConfig)  # the method (the checkpoint's model_spec)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # the frozen 2D network
    data: DataConfig = field(default_factory=DataConfig)  # pretraining shapes and augmentation
    train: TrainConfig = field(default_factory=TrainConfig)  # the training loop
    device: Optional[str] = None  # cpu, cuda, cuda:1 ... (null = cuda if available)
    run_root: str = "runs"  # folder of run directories (relative to the current directory)

    def __post_init__(self):
        self.data.resolve(self.method.recipe)
        if self.data.teacher_in_loader:
            require(not self.data.cache_teacher, "data.teacher_in_loader", "is for the teacher run every step; "
                    "data.cache_teacher already computes the maps once")
            require(self.method.renderer == "released", "data.teacher_in_loader", "needs method.renderer: released")
            require(self.method.guided_masking or self.method.feature_target, "data.teacher_in_loader",
                    "this run uses no teacher (guided_masking and feature_target are both off)")
            require(self.device is None or self.device == "cpu", "data.teacher_in_loader",
                    f"runs the teacher in DataLoader workers on the CPU; device is {self.device!r}")
        if self.data.cache_teacher and (self.method.guided_masking or self.method.feature_target):
            require(self.method.renderer == "invariant", "data.cache_teacher",
                    "a cached teacher needs method.renderer: invariant (released views change with the augmentation)")
            require(self.data.augment == "uniform", "data.cache_teacher",
                    "a cached teacher needs data.augment: uniform (per-axis scaling changes the views)")


def model_spec(config: I2PMAEConfig) -> dict:
    """The checkpoint's `model_spec`: what `build_embedder` needs to rebuild the network."""
    return {"kind": KIND, "config": config_to_dict(config)}
