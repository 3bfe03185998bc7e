"""Networks by name: a decorator registers a builder, one function builds any registered network.

A builder is `fn(channel, num_classes, im_size) -> nn.Module` with im_size an (H, W) tuple. Builders never
seed, move to a device or wrap the model: the caller owns the RNG and the device.
"""

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

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


def batchnorm_layers(model: nn.Module):
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def has_batchnorm(model: nn.Module) -> bool:
    return any(True for _ in batchnorm_layers(model))


def supports_stacking(model: nn.Module) -> bool:
    """Whether copies can be trained as one torch.func stacked ensemble under vmap.

    BatchNorm updates its running statistics in place during training, which vmap cannot do on stacked
    buffers; every other layer here is a pure function of (parameters, input).
    """
    return not has_batchnorm(model)


def _as_height_width(im_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(im_size, numbers.Integral):
        im_size = (im_size, im_size)
    size = tuple(int(s) for s in im_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"im_size must be a positive int or (height, width), got {im_size!r}")
    return size


class EmbedClassifier(nn.Module):
    """The contract every network keeps: `embed(x)` gives (N, d) features, `classifier` is an nn.Linear."""

    classifier: nn.Linear

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def dry_run_shape(module: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Per-sample output shape of `module` on zeros of `input_shape` (no batch dim).

    Runs on the meta device with stand-in parameters: it costs no compute even at 224x224 and leaves the
    real parameters and buffers (e.g. BatchNorm running stats) untouched. Batch of 2 so BatchNorm in
    training mode accepts a 1x1 map.
    """
    state = dict(module.named_parameters())
    state.update(module.named_buffers())
    meta_state = {name: torch.empty_like(t, device="meta") for name, t in state.items()}
    with torch.no_grad():
        out = functional_call(module, meta_state, (torch.zeros(2, *input_shape, device="meta"),))
    return tuple(out.shape[1:])

