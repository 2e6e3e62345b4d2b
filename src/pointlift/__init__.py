"""pointlift: lift 2D image-pretrained knowledge into 3D point-cloud networks."""

__version__ = "0.1.0"
