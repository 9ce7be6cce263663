"""genesis: self-supervised pretraining of 3D and 2D medical imaging models, chest CT first."""

from genesis.errors import GenesisError

__version__ = "0.1.0"
__all__ = ["GenesisError", "__version__"]
