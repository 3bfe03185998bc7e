"""MLP, LeNet, AlexNet(BN) and VGG11(BN), sized for any input by dry runs.

Attribute names follow the paper's base code (`features`, `fc_1`, `fc_2`); the last linear layer is always
`classifier`.
"""

import math

from torch import nn

from networks.layers import EmbedClassifier, dry_run_shape, make_norm, make_pool
from networks.registry import register

# Conv entries are (out_channels, kernel, padding); "M" is a 2x2 max-pool.
ConvConfig = list[tuple[int, int, int] | str]


def conv_relu_stack(channel: int, im_size: tuple[int, int], config: ConvConfig, norm: str):
    """conv -> [norm] -> ReLU per conv entry; returns (nn.Sequential, per-sample output shape)."""
    layers, shape = [], (channel, *im_size)
    for entry in config:
        if entry == "M":
            pool = make_pool("maxpooling", shape)
            shape = dry_run_shape(pool, shape)
            layers.append(pool)
            continue
        out_channels, kernel, padding = entry
        # A kernel wider than the padded map would give an empty output (LeNet's 5x5 on a 4x4 map):
        # pad 'same' instead.
        if min(shape[1:]) + 2 * padding < kernel:
            padding = kernel // 2
        conv = nn.Conv2d(shape[0], out_channels, kernel, padding=padding)
        shape = dry_run_shape(conv, shape)
        layers += [layer for layer in (conv, make_norm(norm, shape), nn.ReLU(inplace=True)) if layer is not None]
    return nn.Sequential(*layers), shape


class ConvStackNet(EmbedClassifier):
    """A conv stack, flattened, then one linear classifier (AlexNet, VGG)."""

    def __init__(self, channel, num_classes, im_size, config: ConvConfig, norm: str):
        super().__init__()
        self.features, shape = conv_relu_stack(channel, im_size, config, norm)
        self.classifier = nn.Linear(math.prod(shape), num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)


class MLP(EmbedClassifier):
    def __init__(self, channel, num_classes, im_size, hidden: int = 128):
        super().__init__()
        self.fc_1 = nn.Linear(channel * im_size[0] * im_size[1], hidden)
        self.fc_2 = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x):
        return self.fc_2(self.fc_1(x.flatten(1)).relu()).relu()


class LeNet(EmbedClassifier):
    def __init__(self, channel, num_classes, im_size):
        super().__init__()
        config = [(6, 5, 2 if channel == 1 else 0), "M", (16, 5, 0), "M"]
        self.features, shape = conv_relu_stack(channel, im_size, config, norm="none")
        self.fc_1 = nn.Linear(math.prod(shape), 120)
        self.fc_2 = nn.Linear(120, 84)
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x):
        return self.fc_2(self.fc_1(self.features(x).flatten(1)).relu()).relu()


def _alexnet_config(channel: int) -> ConvConfig:
    return [(128, 5, 4 if channel == 1 else 2), "M", (192, 5, 2), "M",
            (256, 3, 1), (192, 3, 1), (192, 3, 1), "M"]


def _vgg11_config(channel: int) -> ConvConfig:
    widths = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    first_padding = 3 if channel == 1 else 1  # the paper's 28x28 -> 32x32 treatment of 1-channel inputs
    return [w if w == "M" else (w, 3, first_padding if i == 0 else 1) for i, w in enumerate(widths)]


register("MLP")(MLP)
register("LeNet")(LeNet)


# Registered name -> (layer configuration, norm), as the ConvNet variants are a table in convnet.py.
CONV_STACK_VARIANTS = {
    "AlexNet": (_alexnet_config, "none"),
    "AlexNetBN": (_alexnet_config, "batchnorm"),
    "VGG11": (_vgg11_config, "instancenorm"),
    "VGG11BN": (_vgg11_config, "batchnorm"),
}


def _conv_stack_builder(config, norm: str):
    def build(channel, num_classes, im_size):
        return ConvStackNet(channel, num_classes, im_size, config(channel), norm=norm)

    return build


for _name, (_config, _norm) in CONV_STACK_VARIANTS.items():
    register(_name)(_conv_stack_builder(_config, _norm))
