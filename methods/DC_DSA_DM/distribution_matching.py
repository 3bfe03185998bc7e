"""Distribution matching (DM), batched over classes.

With a frozen random network's embedding phi, DM pulls the mean embedding of each class's synthetic images
onto that of a real batch of the class:

    L = sum_c || mean_i phi(real_c,i) - mean_j phi(syn_c,j) ||^2

All real images go through ONE embed call (no grad: they are constants) and all synthetic images through
ONE more, instead of 2C calls. For networks whose layers act per sample (instance / group / layer norm, no
norm) this is exactly the per-class loop. A BatchNorm network in train mode then normalizes with statistics
of all classes together — precisely what the paper's DM code does for BN models.
Memory: the real side stores no activations; the synthetic side keeps the graph of C*ipc images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def distribution_matching_loss(model: nn.Module, real: Tensor, syn: Tensor) -> Tensor:
    """real (C, n, ch, H, W), syn (C, ipc, ch, H, W) -> scalar; differentiable w.r.t. syn."""
    C, n, ipc = real.shape[0], real.shape[1], syn.shape[1]
    with torch.no_grad():
        mean_real = model.embed(real.flatten(0, 1)).reshape(C, n, -1).mean(1)
    mean_syn = model.embed(syn.flatten(0, 1)).reshape(C, ipc, -1).mean(1)
    return (mean_real - mean_syn).pow(2).sum()


def distribution_matching_loss_loop(model: nn.Module, real: Tensor, syn: Tensor) -> Tensor:
    """The paper's per-class loop (its non-BN path): the reference and the baseline.

    For a BatchNorm network in train mode it differs from the batched loss (per-class vs all-class batch
    statistics); the batched one is the paper's BN behaviour.
    """
    loss = real.new_zeros(())
    for c in range(real.shape[0]):
        out_real = model.embed(real[c]).detach()
        out_syn = model.embed(syn[c])
        loss = loss + torch.sum((out_real.mean(0) - out_syn.mean(0)) ** 2)
    return loss
