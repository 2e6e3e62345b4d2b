"""Image2Point (Xu et al., ECCV 2022): 2D ConvNet weights as 3D weights, then fine-tune a few layers.

1. The network (`pointlift.models.image2point_net.build_network`): the released classification network
   for ResNets, the same design for the depthwise families, or pointlift's earlier `imagenet-stem` design.
2. `.fip`: the "fine-tuning image-pretrained" modes (which layers train). `.config`: the run's settings.
3. `.finetune`: voxelised shape classification (pointlift.tasks.shape_classification) with the engine.
   `.inflate`: step 1 alone, saved as a checkpoint (`pointlift inflate`).
4. `.embedder`: the network as a feature extractor.

The command line reaches Image2Point through `pointlift.registry`.
"""
