"""Gradient matching (DC / DSA), batched over classes: the loss and the whole iteration.

One outer step of DC matches, for every class c, the gradient of the CE loss on a real batch of c with the
gradient on the synthetic images of c, w.r.t. every parameter of a random network:

    L = sum_c d( dCE(syn_c)/dtheta , dCE(real_c)/dtheta )

The paper computes this with a Python loop of 2C backward passes (methods/reference.py keeps it). Here the C
per-class gradients come from ONE call: `vmap(grad(loss))` over the class dim, with the network applied
through `torch.func.functional_call`. vmap folds the class dim into the batch dim of the forward and
input-gradient convs / matmuls, and turns the per-class weight gradients into one grouped conv: one batch of
C*n images instead of C batches of n. That fills a GPU that small per-class batches leave idle; on a CPU the
two do the same FLOPs (README, *Benchmarks*).

Memory: everything lives at once: the real side is a forward + backward of C*batch_real images, the synthetic
side keeps the double-backward graph of C*ipc images. `chunk_size` (classes per vmap chunk) bounds the peak
for many classes: same result, peak memory divided by about C / chunk_size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from methods.DC_DSA_DM.synset import RealSampler, class_labels, per_class
from networks import batchnorm_layers, has_batchnorm
from utils.augment import DISTILLATION_DSA, dsa_augmenter, siamese_augment
from utils.engine import Schedule, TensorSource, train_models
from utils.errors import UserError
from utils.fast import cached_compile, model_key, run_or_fall_back

# The paper's (outer_loop, inner_loop) per ipc.
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
METRICS = ("ours", "mse", "cos")
EPS = 1e-6  # the paper's 0.000001 in every cosine denominator
# Classes whose gradients are computed in one vmap call hold about this many real images together: the
# batched call's memory grows with it (~4.5 MB per 3x32x32 image for ConvNet), the result does not change.
MATCH_CHUNK_REAL_IMAGES = 2560
BN_BATCH_PER_CLASS = 16  # real images per class that set a BatchNorm network's running statistics


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


def _check_batchnorm_frozen(model: nn.Module) -> None:
    # Training-mode BatchNorm mixes the samples of a batch and writes its running stats in place; neither is
    # a per-class function vmap can batch. The paper sets BN to eval mode before matching, and so must we.
    if any(layer.training for layer in batchnorm_layers(model)):
        raise ValueError("a BatchNorm layer is in training mode; per-class gradients need BN in eval mode "
                         "(running statistics frozen), as in the paper's DC loop")


@dataclass(frozen=True)
class MatchingExecution:
    """How to compute, not what: the same loss either way (tests/test_matching.py)."""

    batched: bool = True  # all classes in one vmap(grad) call (GPUs), or one class after another (CPUs)
    compiled: bool = False  # the real side and the inner loop's SGD step through torch.compile (utils/fast.py)


def per_class_gradients(model: nn.Module, images: Tensor, labels: Tensor, create_graph: bool,
                        chunk_size: int | None = None, batched: bool = True, compiled: bool = False) -> list[Tensor]:
    """d mean-CE(model(images[c]), labels[c]) / d theta for every class c: in one vmap(grad) call, or
    (batched=False) one grad call per class — the same per-class function either way.

    images (C, n, ch, H, W), labels (C, n). Returns one (C, *p.shape) tensor per parameter, in
    model.named_parameters() order. create_graph=True keeps the result differentiable w.r.t. `images`
    (ordinary autograd sees straight through torch.func's grad and vmap); False returns plain tensors.
    Parameters enter detached: the matching loss must not send gradients into the network (unlike the
    paper's loop, whose backward also computes the network's unused gradients). compiled=True (real side
    only: no graph is kept) runs the batched call, or each class's call, through torch.compile, which fuses
    the norm, activation and pooling passes.
    """
    _check_batchnorm_frozen(model)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def class_loss(p, x, y):  # one class: x (n, ch, H, W), y (n,)
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    if not create_graph:
        images = images.detach()
        if compiled and batched:
            return _compiled_real_gradients(model, images, labels, chunk_size)
        if compiled:  # one compiled call per class (a CPU: 1.4x the eager loop, the batched call 1.13x)
            per_class = [_compiled_real_gradients(model, images[c:c + 1], labels[c:c + 1], None)
                         for c in range(images.shape[0])]
            return [torch.cat(grads) for grads in zip(*per_class)]
    if not batched and not create_graph and all(p.requires_grad for p in model.parameters()):
        # Plain autograd on the module: on a CPU it measured ~1.3-2x faster than torch.func.grad for large
        # real batches (README, *Benchmarks*); without a graph it sends nothing into the network.
        weights = list(model.parameters())
        per_class = [torch.autograd.grad(F.cross_entropy(model(images[c]), labels[c]), weights)
                     for c in range(images.shape[0])]
        return [torch.stack(grads) for grads in zip(*per_class)]
    if not batched:
        per_class = [grad(class_loss)(params, images[c], labels[c]) for c in range(images.shape[0])]
        return [torch.stack([g[name] for g in per_class]) for name in params]
    grads = vmap(grad(class_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, images, labels)
    return [grads[name] for name in params]


def _compiled_real_gradients(model: nn.Module, images: Tensor, labels: Tensor, chunk_size: int | None) -> list[Tensor]:
    """The batched real side through one compiled function of (parameters, buffers, images, labels)."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def build():
        base = copy.deepcopy(model).to("meta")

        def class_loss(p, b, x, y):
            return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

        return vmap(grad(class_loss), in_dims=(None, None, 0, 0), chunk_size=chunk_size)

    def eager(p, b, x, y):
        return vmap(grad(lambda p, x, y: F.cross_entropy(functional_call(model, (p, b), (x,)), y)),
                    in_dims=(None, 0, 0), chunk_size=chunk_size)(p, x, y)

    key = ("real_side", *model_key(model), str(images.device), chunk_size)
    compiled = cached_compile(key, build, images.device, mode="default")  # no CUDA graph: large tensors
    grads = run_or_fall_back(compiled, eager, params, buffers, images, labels)
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
    distance = gw_real[0].new_zeros(C)
    if metric == "ours":
        for gs, gr in zip(gw_syn, gw_real):
            if gr.dim() <= 2:  # (C,) + a 1-D parameter
                continue
            gs, gr = gs.flatten(2), gr.flatten(2)  # (C, out, rest)
            cos = (gs * gr).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + EPS)
            distance = distance + (1 - cos).sum(-1)
        return distance
    if metric == "mse":
        for gs, gr in zip(gw_syn, gw_real):
            distance = distance + (gs - gr).pow(2).flatten(1).sum(1)
        return distance
    # cos: the dot product and the norms of the concatenation are sums over the pieces (no concat needed)
    dot, rr, ss = distance, distance, distance
    for gs, gr in zip(gw_syn, gw_real):
        gs, gr = gs.flatten(1), gr.flatten(1)
        dot, rr, ss = dot + (gs * gr).sum(1), rr + gr.pow(2).sum(1), ss + gs.pow(2).sum(1)
    return 1 - dot / (rr.sqrt() * ss.sqrt() + EPS)


def gradient_matching_loss(model: nn.Module, real: Tensor, syn: Tensor, labels_real: Tensor | None = None,
                           labels_syn: Tensor | None = None, metric: str = "ours", chunk_size: int | None = None,
                           execution: MatchingExecution = MatchingExecution()) -> Tensor:
    """sum_c d(grad CE(syn_c), grad CE(real_c)); real (C, n, ...), syn (C, ipc, ...).

    Labels (C, n) / (C, ipc) default to the class index of the block. Differentiable w.r.t. `syn` only.
    chunk_size: classes per vmap chunk (None = all at once); bounds memory, same result.
    execution: how (class-batched or one class at a time, compiled or not); the same loss either way.
    """
    if metric not in METRICS:  # fail before the expensive part
        raise UserError(f"unknown distance metric {metric!r}; known: {'|'.join(METRICS)}")
    C = real.shape[0]
    if labels_real is None:
        labels_real = class_labels(C, real.shape[1], real.device)
    if labels_syn is None:
        labels_syn = class_labels(C, syn.shape[1], syn.device)
    gw_real = per_class_gradients(model, real, labels_real, False, chunk_size, execution.batched, execution.compiled)
    gw_syn = per_class_gradients(model, syn, labels_syn, True, chunk_size, execution.batched)
    return match_distance(gw_syn, gw_real, metric).sum()


# ---------------------------------------------------------------- one DC / DSA iteration
def execution_for(runtime, iterations: int) -> MatchingExecution:
    """Per device, by measurement (README, *Benchmarks*): on CUDA the class-batched loss and the compiled inner
    step; on a CPU the per-class loop (vmap's extra passes over C-times-larger tensors cost more there),
    compiled in runs long enough to repay it (Runtime.compiles)."""
    return MatchingExecution(batched=runtime.device.type == "cuda", compiled=runtime.compiles(iterations))


@dataclass(frozen=True)
class MatchingSettings:
    ipc: int
    batch_real: int  # real images per class per outer step
    batch_train: int  # inner-loop batch size
    lr_net: float  # inner-loop learning rate
    metric: str  # ours | mse | cos
    augmentation: str | None  # DSA strategy (Siamese on real and synthetic images), None for DC
    classes: slice  # the classes whose matching loss this process computes (all of them in one process)
    execution: MatchingExecution = field(default_factory=lambda: MatchingExecution())


def gradient_matching_iteration(make_network: Callable[[], nn.Module], sample_real: RealSampler,
                                image_syn: Tensor, generator: torch.Generator,
                                step_images: Callable[[Tensor], Tensor], settings: MatchingSettings) -> Tensor:
    """One DC / DSA iteration: a fresh random network; outer_loop times match the per-class gradients of
    real and synthetic images and step the images (`step_images(loss)` adds CLoM and takes the SGD step),
    then train the network inner_loop epochs on the synthetic set. Returns the mean loss per class and step (a
    device tensor: nothing here waits for the device).

    image_syn: (C*ipc, ch, H, W), class-major, requires grad. Every draw comes from `generator`.
    """
    outer_loop, inner_loop = get_loops(settings.ipc)
    net = make_network()
    net.train()
    num_classes = image_syn.shape[0] // settings.ipc
    labels = class_labels(num_classes, settings.ipc, image_syn.device).reshape(-1)
    inner_schedule = Schedule(epochs=inner_loop, batch_size=settings.batch_train, lr=settings.lr_net,
                              momentum=0.0, weight_decay=0.0,
                              augment=dsa_augmenter(settings.augmentation, DISTILLATION_DSA))
    mine = settings.classes
    total = image_syn.new_zeros(())
    for step in range(outer_loop):
        if has_batchnorm(net):
            freeze_batchnorm_statistics(net, sample_real(BN_BATCH_PER_CLASS, generator).flatten(0, 1))
        real = sample_real(settings.batch_real, generator)
        syn = per_class(image_syn, num_classes)
        if settings.augmentation is not None:
            real, syn = siamese_augment(real, syn, settings.augmentation, generator)
        # Every process draws the same batches; each matches only its own classes (BN layers are frozen,
        # so the classes are independent) and step_images sums the images' gradients.
        loss = image_syn.new_zeros(())
        if mine.stop > mine.start:
            classes = torch.arange(mine.start, mine.stop, device=image_syn.device)[:, None]
            loss = gradient_matching_loss(net, real[mine], syn[mine], classes.expand(-1, real.shape[1]),
                                          classes.expand(-1, syn.shape[1]), metric=settings.metric,
                                          chunk_size=max(1, MATCH_CHUNK_REAL_IMAGES // real.shape[1]),
                                          execution=settings.execution)
        total = total + step_images(loss)
        if step == outer_loop - 1:
            break
        train_models([net], TensorSource(image_syn.detach(), labels, num_classes), inner_schedule, [generator],
                     compiled=settings.execution.compiled)
    return total / (num_classes * outer_loop)


def freeze_batchnorm_statistics(net: nn.Module, real_images: Tensor) -> None:
    """The paper's trick: a synthetic batch is too small for BatchNorm statistics, so set the running
    statistics from a real batch (train-mode forward) and then fix them (BN layers in eval mode)."""
    net.train()
    with torch.no_grad():
        net(real_images)
    for layer in batchnorm_layers(net):
        layer.eval()
