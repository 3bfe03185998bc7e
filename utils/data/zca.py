"""ZCA whitening of a loaded data set, as MTT's loader does it: kornia's ZCAWhitening with eps 0.1, fitted on the
training images in [0, 1] pixels (not mean/std-normalized), applied to both splits.

A whitened set keeps the ImageSet interface (images(), labels, per-class sampling), with mean 0 and std 1 so
that nothing maps it "back to pixels" by mistake; `ZcaTransform.to_pixels` is the way back (for pictures, and for
pre-trained models that expect pixels). The fit is a function of the training images alone, so a tool that refits
it (validate.py) gets the same transform up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from kornia.enhance import ZCAWhitening

from utils.data.imageset import ImageSet
from utils.data.load import LoadedDataset
from utils.errors import UserError

ZCA_EPS = 0.1  # MTT's value
_CHUNK = 4096  # images per matrix product when transforming a split


@dataclass
class ZcaTransform:
    """A fitted whitening: `whiten` (pixels -> whitened) and `to_pixels` (its inverse), both differentiable."""

    zca: ZCAWhitening
    eps: float

    def whiten(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.zca(part) for part in pixels.split(_CHUNK)]) if len(pixels) else pixels

    def to_pixels(self, whitened: torch.Tensor) -> torch.Tensor:
        return self.zca.inverse_transform(whitened)


def fit_zca(train_pixels: torch.Tensor, eps: float = ZCA_EPS) -> ZcaTransform:
    zca = ZCAWhitening(eps=eps, compute_inv=True)
    zca.fit(train_pixels)
    return ZcaTransform(zca, eps)


def zca_whiten_dataset(data: LoadedDataset, eps: float = ZCA_EPS) -> tuple[LoadedDataset, ZcaTransform]:
    """Both splits of a data set loaded in pixel space (load_dataset(..., normalize=False)), whitened with the
    transform fitted on its training split."""
    if data.normalized:
        raise UserError("ZCA whitening is fitted on [0, 1] pixels: load the data set without normalization")
    transform = fit_zca(data.train.images(), eps)

    def whitened(split: ImageSet) -> ImageSet:
        channels = split.image_shape[0]
        with torch.no_grad():
            images = transform.whiten(split.images())
        return ImageSet(images.float().contiguous(), split.labels, split.num_classes,
                        torch.zeros(channels), torch.ones(channels), normalized=False)

    return replace(data, train=whitened(data.train), test=whitened(data.test)), transform
