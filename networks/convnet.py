"""ConvNet (the paper's default network) and its registered variants, plus the shared layer vocabulary.

Layer order and attribute names follow the paper's base code, so `features.<i>` / `classifier` state-dict
keys line up with its checkpoints.
"""

import math
from functools import partial

from torch import nn

from networks.registry import EmbedClassifier, dry_run_shape, register

_NORMS = {
    "instancenorm": lambda c, shape: nn.GroupNorm(c, c, affine=True),  # one group per channel
    "batchnorm": lambda c, shape: nn.BatchNorm2d(c),
    "layernorm": lambda c, shape: nn.LayerNorm(list(shape)),  # over the whole current (C, H, W)
    "groupnorm": lambda c, shape: nn.GroupNorm(4, c, affine=True),
}
_ACTIVATIONS = {
    "relu": nn.ReLU,
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


class ConvNet(EmbedClassifier):
    """depth x [conv3x3 -> norm -> activation -> 2x2 pool] -> flatten -> linear."""

    def __init__(self, channel: int, num_classes: int, im_size: tuple[int, int], width: int = 128,
                 depth: int = 3, act: str = "relu", norm: str = "instancenorm", pooling: str = "avgpooling"):
        super().__init__()
        layers = []
        shape = (channel, *im_size)
        for d in range(depth):
            # The paper pads 1-channel (28x28) inputs by 3 on the first layer, i.e. treats them as 32x32.
            conv = nn.Conv2d(shape[0], width, kernel_size=3, padding=3 if channel == 1 and d == 0 else 1)
            shape = dry_run_shape(conv, shape)
            layers += [conv, make_norm(norm, shape), make_activation(act)]
            pool = make_pool(pooling, shape)
            if pool is not None:
                shape = dry_run_shape(pool, shape)
                layers.append(pool)
        self.features = nn.Sequential(*[layer for layer in layers if layer is not None])
        self.classifier = nn.Linear(math.prod(shape), num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)


# Registered name -> settings that differ from the default ConvNet.
CONVNET_VARIANTS: dict[str, dict] = {
    "ConvNet": {},
    **{f"ConvNetD{depth}": {"depth": depth} for depth in range(1, 7)},
    **{f"ConvNetW{width}": {"width": width} for width in (32, 64, 128, 256)},
    "ConvNetAS": {"act": "sigmoid"},
    "ConvNetAR": {"act": "relu"},
    "ConvNetAL": {"act": "leakyrelu"},
    "ConvNetASwish": {"act": "swish"},
    "ConvNetASwishBN": {"act": "swish", "norm": "batchnorm"},
    "ConvNetNN": {"norm": "none"},
    "ConvNetBN": {"norm": "batchnorm"},
    "ConvNetLN": {"norm": "layernorm"},
    "ConvNetIN": {"norm": "instancenorm"},
    "ConvNetGN": {"norm": "groupnorm"},
    "ConvNetNP": {"pooling": "none"},
    "ConvNetMP": {"pooling": "maxpooling"},
    "ConvNetAP": {"pooling": "avgpooling"},
}

for _name, _settings in CONVNET_VARIANTS.items():
    register(_name)(partial(ConvNet, **_settings))
