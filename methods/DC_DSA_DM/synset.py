"""The synthetic set being distilled: class-major images (C*ipc, ch, H, W) in the data set's normalized
space, their labels [0]*ipc + [1]*ipc + ..., how they start (noise or real images) and how they are shown
(a PNG grid, one row per class)."""

from __future__ import annotations

import io

import torch
from torch import Tensor
from torchvision.utils import save_image

from utils.data import ImageSet
from utils.misc import UserError

INITS = ("noise", "real")


def class_major_labels(num_classes: int, ipc: int, device: torch.device | str = "cpu") -> Tensor:
    """[0, .., 0, 1, .., 1, ...]: ipc labels per class, class by class (the paper's order)."""
    return torch.arange(num_classes, device=device).repeat_interleave(ipc)


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
            raise UserError(f"--init real needs {ipc} real images per class, but class(es) {short} have only "
                            f"{[counts[c] for c in short]}; use a smaller --ipc or --init noise")
        return train.sample_per_class(ipc, generator).flatten(0, 1).clone()
    raise UserError(f"--init must be one of {'|'.join(INITS)}, got {init!r}")


def visualization_png(images: Tensor, train: ImageSet, ipc: int) -> bytes:
    """A PNG grid with one row per class: images mapped back to pixel space and clipped to [0, 1]."""
    pixels = train.denormalize(images.detach().float()).clamp(0, 1).cpu()
    buffer = io.BytesIO()
    save_image(pixels, buffer, nrow=ipc, format="png")
    return buffer.getvalue()
