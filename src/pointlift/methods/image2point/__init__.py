"""Image2Point (Xu et al., ECCV 2022): 2D ConvNet weights as 3D weights, then fine-tune a few layers.

1. The network (`pointlift.models.image2point_net.build_network`): the released classification network
   for ResNets, the same design for the depthwise families, or pointlift's earlier `imagenet-stem` design.
2. `.fip`: the "fine-tuning image-pretrained" modes (which layers train). `.config`: the run's settings.
3. `.finetune`: voxelised shape classification (pointlift.tasks.shape_classification) with the engine.
4. `.embedder`: the network as a feature extractor. `.commands`: the CLI layer.

Re-exports the names other layers imported from the former single module.
"""

from pointlift.methods.image2point.commands import finetune_command, inflate_command
from pointlift.methods.image2point.config import Image2PointConfig, Image2PointDataConfig, InflationConfig
from pointlift.methods.image2point.embedder import build_embedder
from pointlift.methods.image2point.finetune import finetune

__all__ = ["Image2PointConfig", "Image2PointDataConfig", "InflationConfig", "build_embedder", "finetune",
           "finetune_command", "inflate_command"]
