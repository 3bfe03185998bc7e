"""Distribution matching (DM), batched over classes: the loss and the whole iteration.

With a frozen random network's embedding phi, DM pulls the mean embedding of each class's synthetic images
onto that of a real batch of the class:

    L = sum_c || mean_i phi(real_c,i) - mean_j phi(syn_c,j) ||^2

All real images go through ONE embed call (no grad: they are constants) and all synthetic images through
ONE more, instead of 2C calls (the paper's loop: methods/reference.py). For networks whose layers act per
sample (instance / group / layer norm, no norm) this is exactly the per-class loop. A BatchNorm network in
train mode then normalizes with statistics of all classes together — precisely what the paper's DM code does
for BN models. Memory: the real side stores no activations; the synthetic side keeps the graph of C*ipc images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from methods.DC_DSA_DM.synset import RealSampler, per_class
from networks import has_batchnorm
from utils.augment import siamese_augment


def distribution_matching_loss(model: nn.Module, real: Tensor, syn: Tensor) -> Tensor:
    """real (C, n, ch, H, W), syn (C, ipc, ch, H, W) -> scalar; differentiable w.r.t. syn."""
    C, n, ipc = real.shape[0], real.shape[1], syn.shape[1]
    with torch.no_grad():
        mean_real = model.embed(real.flatten(0, 1)).reshape(C, n, -1).mean(1)
    mean_syn = model.embed(syn.flatten(0, 1)).reshape(C, ipc, -1).mean(1)
    return (mean_real - mean_syn).pow(2).sum()


@dataclass(frozen=True)
class DMSettings:
    batch_real: int  # real images per class
    augmentation: str | None  # DSA strategy (Siamese on real and synthetic images), None: none
    classes: slice  # the classes whose loss this process computes (all of them in one process)
    world: int = 1  # processes sharing the classes (torchrun)


def distribution_matching_iteration(make_network: Callable[[], nn.Module], sample_real: RealSampler,
                                    image_syn: Tensor, generator: torch.Generator,
                                    step_images: Callable[[Tensor], float], settings: DMSettings) -> float:
    """One DM iteration: a fresh random, frozen network (train mode); match every class's mean embedding,
    then `step_images(loss)` (adds CLoM, takes the SGD step). Returns the loss per class."""
    net = make_network()
    net.train().requires_grad_(False)
    real = sample_real(settings.batch_real, generator)
    num_classes = real.shape[0]
    syn = per_class(image_syn, num_classes)
    if settings.augmentation is not None:
        real, syn = siamese_augment(real, syn, settings.augmentation, generator)
    mine = settings.classes
    if has_batchnorm(net):  # BN statistics mix the classes: every process computes the whole loss, scaled
        loss = distribution_matching_loss(net, real, syn) / settings.world
    elif mine.stop > mine.start:
        loss = distribution_matching_loss(net, real[mine], syn[mine])
    else:
        loss = image_syn.new_zeros(())
    return step_images(loss) / num_classes
