"""Classifier networks by name. Importing the package registers every architecture."""

from networks import classic, convnet, resnet  # noqa: F401  (imported for their @register side effects)
from networks.layers import batchnorm_layers, has_batchnorm, supports_stacking
from networks.registry import UnknownNetworkError, build_network, list_networks, register

__all__ = [
    "UnknownNetworkError",
    "batchnorm_layers",
    "build_network",
    "has_batchnorm",
    "list_networks",
    "register",
    "supports_stacking",
]
