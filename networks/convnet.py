"""ConvNet (the paper's default network) and its registered variants.

Layer order and attribute names follow the paper's base code, so `features.<i>` / `classifier` state-dict
keys line up with its checkpoints.
"""

import math
from functools import partial

from torch import nn

from networks.layers import EmbedClassifier, dry_run_shape, make_activation, make_norm, make_pool
from networks.registry import register


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
