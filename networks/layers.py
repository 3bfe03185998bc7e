"""The layers every architecture is built from: norm / activation / pool chosen by name, the embed +
classifier contract (EmbedClassifier), sizing by dry run, and which models hold BatchNorm layers."""

from collections.abc import Iterator, Sequence
from functools import partial

import torch
from torch import nn
from torch.func import functional_call

_NORMS = {
    "instancenorm": lambda c, shape: nn.GroupNorm(c, c, affine=True),  # one group per channel
    "batchnorm": lambda c, shape: nn.BatchNorm2d(c),
    "layernorm": lambda c, shape: nn.LayerNorm(list(shape)),  # over the whole current (C, H, W)
    "groupnorm": lambda c, shape: nn.GroupNorm(4, c, affine=True),
}
_ACTIVATIONS = {
    # In place, as the paper's networks: on a CPU a fresh output for every ReLU cost 8% of a DM iteration.
    "relu": partial(nn.ReLU, inplace=True),
    "sigmoid": nn.Sigmoid,
    "leakyrelu": partial(nn.LeakyReLU, negative_slope=0.01),
    "swish": nn.SiLU,  # SiLU is exactly x * sigmoid(x)
}
_POOLS = {
    "avgpooling": partial(nn.AvgPool2d, kernel_size=2, stride=2),
    "maxpooling": partial(nn.MaxPool2d, kernel_size=2, stride=2),
}


def _choose(table: dict, kind: str, what: str):
    if kind not in table:
        raise ValueError(f"unknown {what} {kind!r}; known: {', '.join([*table, 'none'])}")
    return table[kind]


def make_norm(kind: str, shape: tuple[int, ...]) -> nn.Module | None:
    """Norm layer for a (C, H, W) feature map; None for 'none'."""
    return None if kind == "none" else _choose(_NORMS, kind, "norm")(shape[0], shape)


def make_activation(kind: str) -> nn.Module:
    return _choose(_ACTIVATIONS, kind, "activation")()


def make_pool(kind: str, shape: tuple[int, ...]) -> nn.Module | None:
    """2x2 pooling, or nn.Identity when the map is already under 2 pixels a side.

    Deep nets on small images (e.g. ConvNetD6 on 8x8) then stop downsampling instead of reaching 0x0;
    Identity rather than nothing keeps the layer indices (state-dict keys) independent of image size.
    """
    if kind == "none":
        return None
    pool = _choose(_POOLS, kind, "pooling")
    return pool() if min(shape[1:]) >= 2 else nn.Identity()


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


def batchnorm_layers(model: nn.Module) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm modules (any dimension), in module order."""
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def has_batchnorm(model: nn.Module) -> bool:
    return next(batchnorm_layers(model), None) is not None


def supports_stacking(model: nn.Module) -> bool:
    """Whether copies can be trained as one torch.func stacked ensemble under vmap.

    BatchNorm updates its running statistics in place during training, which vmap cannot do on stacked
    buffers; every other layer here is a pure function of (parameters, input).
    """
    return not has_batchnorm(model)
