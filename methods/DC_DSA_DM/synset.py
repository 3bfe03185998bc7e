"""The synthetic set being distilled: class-major images (C*ipc, ch, H, W) in the data set's normalized
space, their labels [0]*ipc + [1]*ipc + ..., how they start (noise or real images) and how they are shown
(a PNG grid, one row per class)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.data import ImageSet
from utils.errors import SettingError

INITS = ("noise", "real")
# (n, generator) -> (C, n, ch, H, W): n random real images of every class (ImageSet.sample_per_class).
RealSampler = Callable[[int, torch.Generator], Tensor]


def class_labels(num_classes: int, per_class: int, device: torch.device | str = "cpu") -> Tensor:
    """(C, n) labels [[0]*n, [1]*n, ...]; `.reshape(-1)` gives the flat class-major order of a set."""
    return torch.arange(num_classes, device=device).view(-1, 1).expand(num_classes, per_class)


def per_class(images: Tensor, num_classes: int) -> Tensor:
    """(C*ipc, ch, H, W) -> (C, ipc, ch, H, W), a view (gradients flow back to `images`)."""
    return images.view(num_classes, -1, *images.shape[1:])


def initial_images(train: ImageSet, ipc: int, init: str, generator: torch.Generator) -> Tensor:
    """The starting synthetic images: standard normal noise, or ipc distinct random real images per class.
    Every draw comes from `generator` (on the data's device)."""
    if init == "noise":
        shape = (train.num_classes * ipc, *train.image_shape)
        return torch.randn(shape, generator=generator, device=generator.device).to(train.device)
    if init == "real":
        counts = train.class_counts().tolist()
        short = [c for c, count in enumerate(counts) if count < ipc]
        if short:
            raise SettingError("init", f"real needs {ipc} real images per class, but class(es) {short} have "
                               f"only {[counts[c] for c in short]}; use a smaller ipc or noise")
        return train.sample_per_class(ipc, generator).flatten(0, 1).clone()
    raise SettingError("init", f"must be one of {'|'.join(INITS)}, got {init!r}")


GRID_MIN_PIXELS = 32  # small images (Digits' 8x8) are enlarged to at least this many pixels a side
GRID_BORDER = 2  # pixels of mid-grey between the images: visible on black and on white backgrounds


def visualization_png(images: Tensor, train: ImageSet, ipc: int) -> bytes:
    """A PNG grid with one row per class: images mapped back to pixel space and clipped to [0, 1], enlarged
    (nearest neighbour, an integer factor) to at least GRID_MIN_PIXELS a side, a thin grey border between."""
    pixels = train.denormalize(images.detach().float()).clamp(0, 1).cpu()
    factor = math.ceil(GRID_MIN_PIXELS / min(pixels.shape[-2:]))
    if factor > 1:
        pixels = F.interpolate(pixels, scale_factor=factor, mode="nearest")
    # imported here: torchvision's package import pulls in torch._dynamo (seconds at every CLI's start-up)
    from torchvision.utils import save_image

    buffer = io.BytesIO()
    save_image(pixels, buffer, nrow=ipc, padding=GRID_BORDER, pad_value=0.5, format="png")
    return buffer.getvalue()
