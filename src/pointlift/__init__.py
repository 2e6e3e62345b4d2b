"""pointlift: lift 2D image-pretrained knowledge into 3D point-cloud networks.

Python API (timm's shape): `pointlift.create_model(name, ...)`, `pointlift.load(checkpoint)`,
`pointlift.list_models()` - see `pointlift.api`. They import torch on first use, not on `import pointlift`.
"""

__version__ = "0.1.0"


def create_model(name: str, num_classes: int = 0, **config):
    """A freshly initialised network of method `name` (see `pointlift.api.create_model`)."""
    from pointlift.api import create_model as create

    return create(name, num_classes, **config)


def load(checkpoint, num_classes: int = 0):
    """The network of a pointlift checkpoint or run directory, trained weights loaded (`pointlift.api.load`)."""
    from pointlift.api import load as load_checkpoint

    return load_checkpoint(checkpoint, num_classes)


def list_models() -> list[str]:
    """Names `create_model` accepts."""
    from pointlift.api import list_models as names

    return names()
