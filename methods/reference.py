"""Slow, obviously-correct versions of the losses, written the way the paper's code computes them.

Tests check the batched / class-sum forms against these, and benchmarks time them as the baseline.
Nothing in a distillation run calls this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.DC_DSA_DM.gradient_matching import EPS


# ---------------------------------------------------------------- DC / DSA: one class at a time
def gradient_matching_loss_loop(model: nn.Module, real: Tensor, syn: Tensor, metric: str = "ours") -> Tensor:
    """The paper's gradient matching: for each class, two torch.autograd.grad calls and its distance.
    real (C, n, ...), syn (C, ipc, ...); differentiable w.r.t. syn."""
    params = list(model.parameters())
    loss = real.new_zeros(())
    for c in range(real.shape[0]):
        lab_real = torch.full((real.shape[1],), c, dtype=torch.long, device=real.device)
        lab_syn = torch.full((syn.shape[1],), c, dtype=torch.long, device=syn.device)
        gw_real = torch.autograd.grad(F.cross_entropy(model(real[c]), lab_real), params)
        gw_real = [g.detach() for g in gw_real]
        gw_syn = torch.autograd.grad(F.cross_entropy(model(syn[c]), lab_syn), params, create_graph=True)
        loss = loss + paper_distance(gw_syn, gw_real, metric)
    return loss


def paper_distance(gw_syn: list[Tensor], gw_real: list[Tensor], metric: str) -> Tensor:
    """The paper's match_loss for one class (unbatched), written independently of match_distance."""
    if metric == "ours":
        dis = gw_real[0].new_zeros(())
        for gs, gr in zip(gw_syn, gw_real):
            if gr.dim() == 1:
                continue
            gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
            dis = dis + torch.sum(1 - torch.sum(gr * gs, -1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + EPS))
        return dis
    gs = torch.cat([g.reshape(-1) for g in gw_syn])
    gr = torch.cat([g.reshape(-1) for g in gw_real])
    if metric == "mse":
        return torch.sum((gs - gr) ** 2)
    if metric == "cos":
        return 1 - torch.sum(gr * gs) / (gr.norm() * gs.norm() + EPS)
    raise ValueError(f"unknown distance metric {metric!r}")


# ---------------------------------------------------------------- DM: one class at a time
def distribution_matching_loss_loop(model: nn.Module, real: Tensor, syn: Tensor) -> Tensor:
    """The paper's per-class DM loop (its non-BN path).

    For a BatchNorm network in train mode it differs from the batched loss (per-class vs all-class batch
    statistics); the batched one is the paper's BN behaviour.
    """
    loss = real.new_zeros(())
    for c in range(real.shape[0]):
        out_real = model.embed(real[c]).detach()
        out_syn = model.embed(syn[c])
        loss = loss + torch.sum((out_real.mean(0) - out_syn.mean(0)) ** 2)
    return loss


# ---------------------------------------------------------------- CLoM: the |B| x |S| matrices
def clom_direct(
    distance: str,
    syn_outputs: Tensor,
    syn_labels: Tensor,
    real_labels: Tensor,
    real_outputs: Tensor | None = None,
    alpha: float = 1.0,
) -> Tensor:
    """CLoM as the paper writes it, with the full |B| x |S| matrices D and M. `ce`: syn_outputs are logits
    (real_outputs unused); `cos`: syn_outputs / real_outputs are features F(x)."""
    mask = (real_labels[:, None] == syn_labels[None, :]).to(syn_outputs.dtype)  # M[i, j] = [y_i == y_j]
    if distance == "ce":
        neg_log_p = -F.log_softmax(syn_outputs, dim=1)  # (|S|, C)
        distance = neg_log_p[:, real_labels].T  # D[i, j] = -log p*(x_j)[y_i]
    elif distance == "cos":
        distance = 1 - F.normalize(real_outputs, dim=1) @ F.normalize(syn_outputs, dim=1).T
    else:
        raise ValueError(f"clom_direct: distance must be 'ce' or 'cos', got {distance!r}")
    return alpha * (distance * mask).sum() / distance.sum()


# ---------------------------------------------------------------- MTT: the whole unrolled student in one graph
def unrolled_trajectory_loss(model: nn.Module, start: Tensor, target: Tensor, images: Tensor, labels: Tensor,
                             syn_lr: Tensor, batches) -> Tensor:
    """MTT's loss as its code computes it: the student starts at the flat parameters `start` (model.parameters()
    order) and takes one SGD step per entry of `batches` = [(indices, transform), ...] on transform(images[indices]),
    every step kept in one graph (create_graph=True); then |p_N - target|^2 / |start - target|^2. Differentiable
    w.r.t. images and syn_lr."""
    named = list(model.named_parameters())

    def forward(flat: Tensor, x: Tensor) -> Tensor:
        params, offset = {}, 0
        for name, p in named:
            params[name] = flat[offset: offset + p.numel()].view(p.shape)
            offset += p.numel()
        return torch.func.functional_call(model, params, (x,))

    student = [start.detach().clone().requires_grad_(True)]
    for indices, transform in batches:
        ce = F.cross_entropy(forward(student[-1], transform(images[indices])), labels[indices])
        grad = torch.autograd.grad(ce, student[-1], create_graph=True)[0]
        student.append(student[-1] - syn_lr * grad)
    return torch.sum((student[-1] - target) ** 2) / torch.sum((start - target) ** 2)
