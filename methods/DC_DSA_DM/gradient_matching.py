"""Gradient matching (DC / DSA), batched over classes.

One outer step of DC matches, for every class c, the gradient of the CE loss on a real batch of c with the
gradient on the synthetic images of c, w.r.t. every parameter of a random network:

    L = sum_c d( dCE(syn_c)/dtheta , dCE(real_c)/dtheta )

The paper computes this with a Python loop of 2C backward passes (`gradient_matching_loss_loop`, kept as the
reference). Here the C per-class gradients come from ONE call: `vmap(grad(loss))` over the class dim, with the
network applied through `torch.func.functional_call`. vmap folds the class dim into the batch dim of the
forward and input-gradient convs / matmuls, and turns the per-class weight gradients into one grouped conv:
one batch of C*n images instead of C batches of n. The win is on GPUs, where small per-class batches leave
the device idle. On a CPU the loop is as fast or faster: both do the same FLOPs, and vmap adds unfused
passes (e.g. the GroupNorm affine and its weight gradient) over C-times-larger tensors.

Memory: everything lives at once. The real side is a forward + backward of C*batch_real images (measured
on CPU, ConvNet 3x32x32: about 4.5 MB per real image, against 0.5 GB in all for the loop, which frees each
class's graph), so CIFAR-10 at batch_real 256 needs about 12 GB; the synthetic side keeps the
double-backward graph of C*ipc images. For many classes (CIFAR-100 and up) pass `chunk_size` (classes per
vmap chunk): same result, peak memory divided by about C / chunk_size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from utils.augment import DSAParams, dsa_augment
from utils.misc import UserError

# The paper's (outer_loop, inner_loop) per ipc.
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
METRICS = ("ours", "mse", "cos")
EPS = 1e-6  # the paper's 0.000001 in every cosine denominator


def get_loops(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for `ipc` images per class.

    Tabulated ipc (1, 10, 20, 30, 40, 50): the paper's values. Any other ipc >= 1:
      outer = min(ipc, 50)   (the table has outer = ipc; capped so large ipc does not grow the step count)
      inner = the table's inner, linearly interpolated in ipc between the neighbouring entries and rounded
              half up; beyond 50 it stays at the ipc-50 value (10).
    E.g. 2 -> (2, 6), 5 -> (5, 23), 15 -> (15, 38), 100 -> (50, 10).
    """
    ipc = int(ipc)
    if ipc < 1:
        raise UserError(f"ipc must be >= 1, got {ipc}")
    if ipc in LOOPS:
        return LOOPS[ipc]
    keys = sorted(LOOPS)
    if ipc > keys[-1]:
        return min(ipc, 50), LOOPS[keys[-1]][1]
    lo = max(k for k in keys if k < ipc)
    hi = min(k for k in keys if k > ipc)
    inner_lo, inner_hi = LOOPS[lo][1], LOOPS[hi][1]
    inner = inner_lo + (inner_hi - inner_lo) * (ipc - lo) / (hi - lo)
    return min(ipc, 50), max(1, int(inner + 0.5))


def class_labels(num_classes: int, per_class: int, device) -> Tensor:
    """(C, n) labels [[0]*n, [1]*n, ...]: class-major blocks."""
    return torch.arange(num_classes, device=device).view(-1, 1).expand(num_classes, per_class)


def siamese_augment(real: Tensor, syn: Tensor, strategy: str | None, generator: torch.Generator,
                    params: DSAParams | None = None) -> tuple[Tensor, Tensor]:
    """DSA on real (C, n, ...) and syn (C, ipc, ...) in one call; group = class id, so the real and synthetic
    images of a class get the identical transform (the paper's shared seed), and every class its own."""
    C, n = real.shape[:2]
    both = torch.cat([real, syn], dim=1)  # (C, n + ipc, ch, H, W)
    groups = torch.arange(C, device=real.device).repeat_interleave(both.shape[1])
    out = dsa_augment(both.flatten(0, 1), strategy, generator, groups=groups, params=params or DSAParams(),
                      num_groups=C)
    out = out.reshape(both.shape)
    return out[:, :n], out[:, n:]


def _check_batchnorm_frozen(model: nn.Module) -> None:
    # Training-mode BatchNorm mixes the samples of a batch and writes its running stats in place; neither is
    # a per-class function vmap can batch. The paper sets BN to eval mode before matching, and so must we.
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(f"BatchNorm layer {name!r} is in training mode; per-class gradients need BN in "
                             f"eval mode (running statistics frozen), as in the paper's DC loop")


def per_class_gradients(model: nn.Module, images: Tensor, labels: Tensor, create_graph: bool,
                        chunk_size: int | None = None) -> list[Tensor]:
    """d mean-CE(model(images[c]), labels[c]) / d theta for every class c, in one vmap(grad) call.

    images (C, n, ch, H, W), labels (C, n). Returns one (C, *p.shape) tensor per parameter, in
    model.named_parameters() order. create_graph=True keeps the result differentiable w.r.t. `images`
    (ordinary autograd sees straight through torch.func's grad and vmap); False returns plain tensors.
    Parameters enter detached: the matching loss must not send gradients into the network.
    """
    _check_batchnorm_frozen(model)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def class_loss(p, x, y):  # one class: x (n, ch, H, W), y (n,)
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    if not create_graph:
        images = images.detach()
    grads = vmap(grad(class_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, images, labels)
    return [grads[name] for name in params]


def match_distance(gw_syn: list[Tensor], gw_real: list[Tensor], metric: str) -> Tensor:
    """Per-class distance (C,) between two lists of per-class gradients, each tensor (C, *param.shape).

    ours: sum over weight tensors of sum_out (1 - cos(g_real[out], g_syn[out])), each output unit's gradient
          flattened over the rest (conv: in*kh*kw, 3-D: the rest, linear: in); 1-D tensors (biases, norm
          scales) contribute 0.
    mse:  ||g_syn - g_real||^2 over all gradients concatenated.
    cos:  1 - cos(g_syn, g_real) of the concatenated vectors.
    """
    if metric not in METRICS:
        raise UserError(f"unknown distance metric {metric!r}; known: {'|'.join(METRICS)}")
    C = gw_real[0].shape[0]
    dist = gw_real[0].new_zeros(C)
    if metric == "ours":
        for gs, gr in zip(gw_syn, gw_real):
            if gr.dim() <= 2:  # (C,) + a 1-D parameter
                continue
            gs, gr = gs.flatten(2), gr.flatten(2)  # (C, out, rest)
            cos = (gs * gr).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + EPS)
            dist = dist + (1 - cos).sum(-1)
        return dist
    if metric == "mse":
        for gs, gr in zip(gw_syn, gw_real):
            dist = dist + (gs - gr).pow(2).flatten(1).sum(1)
        return dist
    # cos: the dot product and the norms of the concatenation are sums over the pieces (no concat needed)
    dot, rr, ss = dist, dist, dist
    for gs, gr in zip(gw_syn, gw_real):
        gs, gr = gs.flatten(1), gr.flatten(1)
        dot, rr, ss = dot + (gs * gr).sum(1), rr + gr.pow(2).sum(1), ss + gs.pow(2).sum(1)
    return 1 - dot / (rr.sqrt() * ss.sqrt() + EPS)


def gradient_matching_loss(model: nn.Module, real: Tensor, syn: Tensor, labels_real: Tensor | None = None,
                           labels_syn: Tensor | None = None, metric: str = "ours",
                           chunk_size: int | None = None) -> Tensor:
    """sum_c d(grad CE(syn_c), grad CE(real_c)); real (C, n, ...), syn (C, ipc, ...).

    Labels (C, n) / (C, ipc) default to the class index of the block. Differentiable w.r.t. `syn` only.
    chunk_size: classes per vmap chunk (None = all at once); bounds memory, same result.
    """
    if metric not in METRICS:  # fail before the expensive part
        raise UserError(f"unknown distance metric {metric!r}; known: {'|'.join(METRICS)}")
    C = real.shape[0]
    if labels_real is None:
        labels_real = class_labels(C, real.shape[1], real.device)
    if labels_syn is None:
        labels_syn = class_labels(C, syn.shape[1], syn.device)
    gw_real = per_class_gradients(model, real, labels_real, create_graph=False, chunk_size=chunk_size)
    gw_syn = per_class_gradients(model, syn, labels_syn, create_graph=True, chunk_size=chunk_size)
    return match_distance(gw_syn, gw_real, metric).sum()


def gradient_matching_loss_loop(model: nn.Module, real: Tensor, syn: Tensor, metric: str = "ours") -> Tensor:
    """The paper's algorithm, one class at a time with torch.autograd.grad: the reference and the baseline."""
    params = list(model.parameters())
    loss = real.new_zeros(())
    for c in range(real.shape[0]):
        lab_real = torch.full((real.shape[1],), c, dtype=torch.long, device=real.device)
        lab_syn = torch.full((syn.shape[1],), c, dtype=torch.long, device=syn.device)
        gw_real = torch.autograd.grad(F.cross_entropy(model(real[c]), lab_real), params)
        gw_real = [g.detach() for g in gw_real]
        gw_syn = torch.autograd.grad(F.cross_entropy(model(syn[c]), lab_syn), params, create_graph=True)
        loss = loss + _paper_distance(gw_syn, gw_real, metric)
    return loss


def _paper_distance(gw_syn, gw_real, metric: str) -> Tensor:
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
    raise UserError(f"unknown distance metric {metric!r}; known: {'|'.join(METRICS)}")
