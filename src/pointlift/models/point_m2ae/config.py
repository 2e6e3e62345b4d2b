"""Point-M2AE sizes (`PointM2AEConfig`): hierarchy, encoder and decoder, released defaults."""

from __future__ import annotations

from dataclasses import dataclass

from pointlift.errors import PointliftConfigError

# pointnet2_ops' FPS kernel never picks a point with x^2 + y^2 + z^2 <= 1e-3 (index 0 excepted).
RELEASED_FPS_SKIP = 1e-3


@dataclass
class PointM2AEConfig:
    """Sizes of the hierarchy, encoder and decoder. Defaults are the released pretraining config
    (`cfgs/pre-training/i2p-mae.yaml`: 17.6 M parameters with the I2P-MAE heads).

    `embed_hidden` is the first token embedding's width (released: 128 -> 256, then 512 -> dim);
    smaller values give CPU-sized networks. `fps_skip`: squared radius around the origin whose
    points FPS never picks (released kernel: 1e-3; None = no rule).
    """

    num_points: int = 2048  # input points per shape
    num_centers: tuple[int, ...] = (512, 256, 64)  # token centres (FPS) per scale, finest first
    group_sizes: tuple[int, ...] = (16, 8, 8)  # neighbours (kNN) grouped into each token, per scale
    encoder_dims: tuple[int, ...] = (96, 192, 384)  # token width per scale
    encoder_depths: tuple[int, ...] = (5, 5, 5)  # transformer blocks per scale
    num_heads: int = 6  # attention heads (every width must divide by it)
    mlp_ratio: float = 4.0  # transformer MLP width / token width
    drop_path: float = 0.1  # stochastic depth rate
    embed_hidden: int = 128  # width of the first token embedding (smaller = CPU-sized networks)
    decoder_dims: tuple[int, ...] = (384, 192)  # decoder width per scale, mirroring encoder_dims from the top
    decoder_depths: tuple[int, ...] = (1, 1)  # decoder transformer blocks per scale
    decoder_up_blocks: int = 1  # blocks of the decoder's upsampling
    fps_skip: float | None = RELEASED_FPS_SKIP  # FPS never picks points within this squared radius of the origin

    def __post_init__(self):
        for name in ("num_centers", "group_sizes", "encoder_dims", "encoder_depths", "decoder_dims", "decoder_depths"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        scales = len(self.num_centers)
        if scales == 0 or not (len(self.group_sizes) == len(self.encoder_dims) == len(self.encoder_depths) == scales):
            raise PointliftConfigError("point_m2ae: num_centers, group_sizes, encoder_dims and encoder_depths "
                                       "must have the same non-zero length")
        sizes = (self.num_points, *self.num_centers)
        if any(later > earlier for earlier, later in zip(sizes, sizes[1:])):
            raise PointliftConfigError(f"point_m2ae: centre counts must not grow: num_points, num_centers = {sizes}")
        if any(k > n for k, n in zip(self.group_sizes, sizes)):
            raise PointliftConfigError(f"point_m2ae: a group size exceeds the points it groups: {self.group_sizes} vs {sizes}")
        for dim in (*self.encoder_dims, *self.decoder_dims):
            if dim % self.num_heads:
                raise PointliftConfigError(f"point_m2ae: width {dim} is not divisible by num_heads={self.num_heads}")
        if not self.decoder_dims or len(self.decoder_dims) != len(self.decoder_depths) or len(self.decoder_dims) > scales:
            raise PointliftConfigError("point_m2ae: decoder_dims and decoder_depths need equal length, 1..number of scales")
        mirrored = tuple(reversed(self.encoder_dims))[:len(self.decoder_dims)]
        if self.decoder_dims != mirrored:
            raise PointliftConfigError(f"point_m2ae: decoder_dims must mirror encoder_dims from the top "
                                       f"(the released decoder fuses encoder tokens of equal width): expected {mirrored}")
        if not 0.0 <= self.drop_path < 1.0:
            raise PointliftConfigError(f"point_m2ae: drop_path must be in [0, 1), got {self.drop_path}")
        if self.embed_hidden < 1 or self.decoder_up_blocks < 0:
            raise PointliftConfigError("point_m2ae: embed_hidden must be >= 1 and decoder_up_blocks >= 0")
        if self.fps_skip is not None and self.fps_skip < 0:
            raise PointliftConfigError(f"point_m2ae: fps_skip must be >= 0 or null, got {self.fps_skip}")

    @property
    def num_scales(self) -> int:
        return len(self.num_centers)

    @property
    def recon_scale(self) -> int:
        """The scale the decoder ends at (released: the middle one)."""
        return self.num_scales - len(self.decoder_dims)

    @classmethod
    def small(cls) -> "PointM2AEConfig":
        """A CPU-friendly configuration for tests and the quickstart."""
        return cls(num_points=1024, num_centers=(128, 64, 32), group_sizes=(16, 8, 8),
                   encoder_dims=(64, 128, 256), encoder_depths=(1, 1, 2), num_heads=4,
                   embed_hidden=32, decoder_dims=(256, 128), decoder_depths=(1, 1))
