"""pointlift.geometry: cameras, rigid transforms, voxelisation and multi-view depth rendering and
the read-back of 2D maps at rendered points."""

from pointlift.geometry.camera import (
    backproject,
    depth_to_points,
    in_image,
    occlusion_mask,
    pixel_index,
    project,
    lidar_to_image,
    project_to_image,
)
from pointlift.geometry.render import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DepthViews,
    render_depth_views,
    views_to_teacher_input,
)
from pointlift.geometry.readback import point_pixels, read_back
from pointlift.geometry.transforms import (
    compose,
    invert_rigid,
    random_rotation_about_up,
    rotation_about_axis,
    transform_points,
)
from pointlift.geometry.voxel import Voxelization, average_per_voxel, voxelize

__all__ = [
    "DepthViews",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Voxelization",
    "average_per_voxel",
    "backproject",
    "compose",
    "depth_to_points",
    "in_image",
    "invert_rigid",
    "occlusion_mask",
    "pixel_index",
    "point_pixels",
    "project",
    "project_to_image",
    "lidar_to_image",
    "random_rotation_about_up",
    "read_back",
    "render_depth_views",
    "rotation_about_axis",
    "transform_points",
    "views_to_teacher_input",
    "voxelize",
]
