"""Frozen 2D teachers (any timm model, local or hub weights) and PPKT's upsampling projection."""

from pointlift.teachers.teacher import DEFAULT_TEACHER, RANDOM_WEIGHTS, Teacher
from pointlift.teachers.upl import UpsamplingProjection
from pointlift.teachers.weights import bundled_weights_path, load_weights_file, read_state_dict

__all__ = [
    "DEFAULT_TEACHER",
    "RANDOM_WEIGHTS",
    "Teacher",
    "UpsamplingProjection",
    "bundled_weights_path",
    "load_weights_file",
    "read_state_dict",
]
