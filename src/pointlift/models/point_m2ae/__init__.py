"""Point-M2AE hierarchical point transformer, as released with I2P-MAE (GUIDE §1.3).

- `config`: `PointM2AEConfig` (released sizes by default).
- `hierarchy`: multi-scale FPS + kNN grouping, the random top mask and visibility propagation.
- `blocks`: the released building blocks (attention blocks, token embedding, token propagation).
- `model`: `PointM2AEEncoder` (`H_Encoder`) and `PointM2AE` (encoder + decoder, no heads), the released
  evaluation features; the method heads and losses are `pointlift.methods.i2p_mae`.
- `classifier`: `PointM2AEClassifier`, the released fine-tuning network's layout and names.
"""

from pointlift.models.point_m2ae.classifier import PointM2AEClassifier
from pointlift.models.point_m2ae.config import RELEASED_FPS_SKIP, PointM2AEConfig
from pointlift.models.point_m2ae.model import PointM2AE, PointM2AEEncoder

__all__ = ["PointM2AE", "PointM2AEClassifier", "PointM2AEConfig", "PointM2AEEncoder", "RELEASED_FPS_SKIP"]
