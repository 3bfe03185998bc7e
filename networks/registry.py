"""Networks by name: a decorator registers a builder, one function builds any registered network.

A builder is `fn(channel, num_classes, im_size) -> nn.Module` with im_size an (H, W) tuple. Builders never
seed, move to a device or wrap the model: the caller owns the RNG and the device.
"""

import numbers
from collections.abc import Callable, Sequence

from torch import nn

Builder = Callable[[int, int, tuple[int, int]], nn.Module]

_BUILDERS: dict[str, Builder] = {}


class UnknownNetworkError(ValueError):
    def __init__(self, name: str):
        super().__init__(f"unknown network {name!r}; known: {', '.join(list_networks())}")
        self.name = name


def register(name: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"network {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_networks() -> list[str]:
    return sorted(_BUILDERS)


def build_network(name: str, channel: int, num_classes: int, im_size: int | Sequence[int]) -> nn.Module:
    if name not in _BUILDERS:
        raise UnknownNetworkError(name)
    return _BUILDERS[name](int(channel), int(num_classes), _as_height_width(im_size))


def _as_height_width(im_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(im_size, numbers.Integral):
        im_size = (im_size, im_size)
    size = tuple(int(s) for s in im_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"im_size must be a positive int or (height, width), got {im_size!r}")
    return size
