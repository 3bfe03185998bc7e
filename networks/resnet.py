"""CIFAR-style ResNet18: 3x3 stem at stride 1, no max-pool, four stages of two BasicBlocks.

Attribute names (conv1, bn1, layer1..4, shortcut) follow the paper's base code.
"""

import math

from torch import nn

from networks.layers import EmbedClassifier, dry_run_shape, make_norm
from networks.registry import register

STAGE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus a shortcut, then ReLU.

    Downsampling is either a stride-2 first conv (and shortcut), or, for the _AP variant, stride-1 convs
    followed by 2x2 average pooling after the first conv and inside the shortcut.
    """

    def __init__(self, in_planes: int, planes: int, norm: str, downsample: bool, avgpool_downsampling: bool):
        super().__init__()
        stride = 2 if downsample and not avgpool_downsampling else 1
        pool = nn.AvgPool2d(2) if downsample and avgpool_downsampling else nn.Identity()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, (planes,))
        self.pool = pool
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, (planes,))
        self.shortcut = nn.Sequential()
        if downsample or in_planes != planes:
            projection = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            # The _AP shortcut is [conv, pool, norm] (an Identity stands in for a skipped pool).
            middle = [pool] if avgpool_downsampling else []
            self.shortcut = nn.Sequential(projection, *middle, make_norm(norm, (planes,)))

    def forward(self, x):
        out = self.pool(self.bn1(self.conv1(x)).relu())
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


class ResNet(EmbedClassifier):
    def __init__(self, channel, num_classes, im_size, norm: str, avgpool_downsampling: bool = False,
                 blocks_per_stage=(2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(channel, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = make_norm(norm, (STAGE_WIDTHS[0],))
        shape, in_planes = (STAGE_WIDTHS[0], *im_size), STAGE_WIDTHS[0]
        for stage, (planes, num_blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage)):
            blocks = []
            for index in range(num_blocks):
                # Stages 2-4 halve the map in their first block. A stride-2 3x3 conv maps 1x1 to 1x1, but a
                # 2x2 average pool would map it to 0x0, so the _AP variant skips pooling below 2 pixels.
                downsample = stage > 0 and index == 0 and (min(shape[1:]) >= 2 or not avgpool_downsampling)
                block = BasicBlock(in_planes, planes, norm, downsample, avgpool_downsampling)
                shape, in_planes = dry_run_shape(block, shape), planes
                blocks.append(block)
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        # Global average pool to 512 features; the paper's _AP variant flattens the whole final map instead.
        self.head_pool = nn.Identity() if avgpool_downsampling else nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(math.prod(dry_run_shape(self.head_pool, shape)), num_classes)

    def embed(self, x):
        out = self.bn1(self.conv1(x)).relu()
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.head_pool(out).flatten(1)


@register("ResNet18")
def resnet18(channel, num_classes, im_size):
    return ResNet(channel, num_classes, im_size, norm="instancenorm")


@register("ResNet18BN")
def resnet18_bn(channel, num_classes, im_size):
    return ResNet(channel, num_classes, im_size, norm="batchnorm")


@register("ResNet18BN_AP")
def resnet18_bn_ap(channel, num_classes, im_size):
    return ResNet(channel, num_classes, im_size, norm="batchnorm", avgpool_downsampling=True)
