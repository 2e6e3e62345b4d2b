"""pointlift.data: readers that turn files on disk into NumPy arrays (float32 points, uint8 images,
int64 labels), raising PointliftDataError with the file name for anything bad."""

from pointlift.data.lidar import CameraView, LidarCameraFrame, read_kitti_frame, read_nuscenes_frame
from pointlift.data.points import PointFile, read_point_file, read_raw_bin
from pointlift.data.rgbd import RGBDFrame, RGBDSequence, open_rgbd_sequence
from pointlift.data.shapes import (
    ShapeSet,
    load_modelnet10_vox,
    load_modelnet40_h5,
    load_modelnet40_resampled,
    load_scanobjectnn_h5,
)

__all__ = [
    "CameraView",
    "LidarCameraFrame",
    "PointFile",
    "RGBDFrame",
    "RGBDSequence",
    "ShapeSet",
    "load_modelnet10_vox",
    "load_modelnet40_h5",
    "load_modelnet40_resampled",
    "load_scanobjectnn_h5",
    "open_rgbd_sequence",
    "read_kitti_frame",
    "read_nuscenes_frame",
    "read_point_file",
    "read_raw_bin",
]
