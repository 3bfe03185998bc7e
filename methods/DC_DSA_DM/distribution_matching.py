"""Distribution matching (DM): the loss (batched over classes on CUDA) and the whole iteration.

With a frozen random network's embedding phi, DM pulls the mean embedding of each class's synthetic images
onto that of a real batch of the class:

    L = sum_c || mean_i phi(real_c,i) - mean_j phi(syn_c,j) ||^2

On CUDA all real images go through ONE embed call (no grad: they are constants) and all synthetic images
through ONE more, instead of 2C calls (the paper's loop: methods/reference.py), compiled by default; on a CPU
one class at a time measured faster (batched_on). For networks whose layers act per sample (instance / group
/ layer norm, no norm) both are exactly the per-class loop. A BatchNorm network in train mode is always
batched, so it normalizes with statistics of all classes together — precisely what the paper's DM code does
for BN models. Memory: the real side stores no activations; the synthetic side keeps the graph of C*ipc images.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from methods.DC_DSA_DM.synset import RealSampler, per_class
from networks import has_batchnorm
from utils.augment import siamese_augment
from utils.fast import cached_compile, model_key, run_or_fall_back


def distribution_matching_loss(model: nn.Module, real: Tensor, syn: Tensor, compiled: bool = False,
                               batched: bool = True) -> Tensor:
    """real (C, n, ch, H, W), syn (C, ipc, ch, H, W) -> scalar; differentiable w.r.t. syn.

    batched=False embeds one class at a time (the same values: each image's embedding does not depend on the
    others); on a CPU its smaller working set measured faster (README, *Benchmarks*). compiled=True runs the
    batched loss through torch.compile (utils/fast.py), which fuses each layer's norm, activation and pooling.
    BatchNorm networks always take the eager batched path (their train-mode statistics span all classes, as in
    the paper's DM code, and their forward updates running statistics)."""
    if has_batchnorm(model):
        return _class_means_distance(model.embed, real, syn)
    if compiled:
        if batched:
            return _compiled_loss(model, real, syn)
        return sum(_compiled_loss(model, real[c:c + 1], syn[c:c + 1]) for c in range(real.shape[0]))
    return _class_means_distance(model.embed, real, syn, per_class=not batched)


def _class_means_distance(embed: Callable[[Tensor], Tensor], real: Tensor, syn: Tensor,
                          per_class: bool = False) -> Tensor:
    with torch.no_grad():
        mean_real = _class_means(embed, real, per_class)
    return (mean_real - _class_means(embed, syn, per_class)).pow(2).sum()


def _class_means(embed: Callable[[Tensor], Tensor], images: Tensor, per_class: bool) -> Tensor:
    """(C, n, ...) images -> (C, features) mean embedding per class."""
    if per_class:
        return torch.stack([embed(images[c]).mean(0) for c in range(images.shape[0])])
    C, n = images.shape[:2]
    return embed(images.flatten(0, 1)).reshape(C, n, -1).mean(1)


def batched_on(device: torch.device) -> bool:
    """All classes in one embed call on CUDA (it fills the GPU); one class at a time on a CPU (measured faster)."""
    return device.type == "cuda"


# torch.compile mode of the loss: "default" (fused kernels) or "reduce-overhead" (also a CUDA-graph replay).
# benchmarks/bench_dm_modes.py on an H200: a DM iteration is not launch-bound (ipc 10: 4.48 vs 4.26 ms with the
# graph, ipc 50: 5.84 vs 6.00 ms), so no graph: it would only hold another copy of the inputs.
COMPILE_MODE = "default"


class _Embedding(nn.Module):
    """net.embed as a module's forward, so that functional_call can run it with given weights."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.embed(x)


def _compiled_loss(model: nn.Module, real: Tensor, syn: Tensor) -> Tensor:
    """The loss as one compiled function of (weights, real, syn), built once per architecture and reused by
    every iteration's fresh network; its backward (to syn) is compiled too."""
    weights = {f"net.{name}": value for name, value in [*model.named_parameters(), *model.named_buffers()]}

    def build():
        embedding = _Embedding(copy.deepcopy(model).to("meta"))
        return lambda w, r, s: _class_means_distance(lambda x: functional_call(embedding, w, (x,)), r, s)

    def eager(w, r, s):
        return _class_means_distance(model.embed, r, s)

    key = ("dm_loss", *model_key(model), str(real.device), COMPILE_MODE)
    compiled = cached_compile(key, build, real.device, mode=COMPILE_MODE)
    return run_or_fall_back(compiled, eager, weights, real, syn)


@dataclass(frozen=True)
class DMSettings:
    batch_real: int  # real images per class
    augmentation: str | None  # DSA strategy (Siamese on real and synthetic images), None: none
    classes: slice  # the classes whose loss this process computes (all of them in one process)
    world: int = 1  # processes sharing the classes (torchrun)
    compiled: bool = False  # the loss through torch.compile: Runtime.compiles
    batched: bool = True  # all classes in one embed call (CUDA); False: one class at a time (CPU): batched_on


def distribution_matching_iteration(make_network: Callable[[], nn.Module], sample_real: RealSampler,
                                    image_syn: Tensor, generator: torch.Generator,
                                    step_images: Callable[[Tensor], Tensor], settings: DMSettings) -> Tensor:
    """One DM iteration: a fresh random, frozen network (train mode); match every class's mean embedding,
    then `step_images(loss)` (adds CLoM, takes the SGD step). Returns the loss per class (a device tensor)."""
    net = make_network()
    net.train().requires_grad_(False)
    real = sample_real(settings.batch_real, generator)
    num_classes = real.shape[0]
    syn = per_class(image_syn, num_classes)
    if settings.augmentation is not None:
        real, syn = siamese_augment(real, syn, settings.augmentation, generator)
    mine = settings.classes
    if has_batchnorm(net):  # BN statistics mix the classes: every process computes the whole loss, scaled
        loss = distribution_matching_loss(net, real, syn, settings.compiled, settings.batched) / settings.world
    elif mine.stop > mine.start:
        loss = distribution_matching_loss(net, real[mine], syn[mine], settings.compiled, settings.batched)
    else:
        loss = image_syn.new_zeros(())
    return step_images(loss) / num_classes
