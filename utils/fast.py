"""Fast paths: compiled functional training steps (torch.compile; replayed as CUDA graphs on CUDA).

An eager SGD step of a small network is ~60 tiny kernels launched one by one, plus optimizer kernels: on a
GPU the step is launch-bound (the GPU waits on launches, not on arithmetic). Here the whole step — forward, backward,
weight decay, momentum, update — of K stacked models is ONE function of plain tensors:

    (params, buffers, momenta, x, y, lr) -> (new params, new momenta, per-sample losses, logits)

which torch.compile turns into a few fused kernels (norm + activation + pooling passes fused by inductor).
On CUDA the compiled step is captured once as a CUDA graph over persistent tensors (_StaticStep): each replay
reads the parameters, momenta and lr from, and writes the new ones back into, the same tensors, so a step is
two copies (the batch) and one replay, with no copies of its state in or out. Random draws (batch order,
augmentation) stay outside, so a run is reproducible from its seed exactly as the eager path is.

The maths is torch.optim.SGD's (dampening 0, no Nesterov): d = g + wd*p, m = momentum*m + d, p = p - lr*m,
with m starting at 0 (equal to SGD's first-step m = d). Results match the eager path to float rounding
(fused kernels sum in another order): tests/test_fast.py states the tolerances.

A compiled function (and its CUDA graph, per batch shape) is built once per (architecture, device, number of
models, momentum, weight decay) and reused: DC builds a fresh network every iteration, and its inner loop must
not recompile or recapture each time; a new trainer copies its state into the graph's tensors once.
If compiling fails on some platform, the process logs it once and falls back to the eager step.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from utils.log import get_logger

_COMPILED: dict[tuple, object] = {}
_BROKEN: list[str] = []  # why the fast path was given up in this process (empty: it works)


def compile_options(device: torch.device, **requested) -> dict:
    """torch.compile keyword arguments: inductor with the caller's mode, plain by default (on CUDA the trainer
    captures its own graph). Every compile goes through here, so tests can trace with aot_eager instead."""
    return requested


# Devices whose trainer replays its compiled step as a CUDA graph on persistent tensors (_StaticStep); elsewhere
# the compiled step is called as a function. Tests add "cpu" to run the same bookkeeping without a capture.
STATIC_STEP_DEVICES = {"cuda"}


def fast_path_available() -> bool:
    return not _BROKEN


def _sgd_step_function(base: nn.Module, momentum: float, weight_decay: float):
    """The functional step of K models sharing the architecture of `base` (a meta-device template)."""

    def model_loss(params, buffers, x, y):
        logits = functional_call(base, (params, buffers), (x,))
        losses = F.cross_entropy(logits, y, reduction="none")
        return losses.mean(), (losses.detach(), logits.detach())

    per_model = vmap(grad(model_loss, has_aux=True))

    def step(params, buffers, momenta, x, y, lr):
        grads, (losses, logits) = per_model(params, buffers, x, y)
        new_params, new_momenta = {}, {}
        for name, p in params.items():
            d = grads[name] + weight_decay * p if weight_decay else grads[name]
            m = momenta[name] * momentum + d if momentum else d
            new_momenta[name] = m
            new_params[name] = p - lr * m
        return new_params, new_momenta, losses, logits

    return step


def model_key(model: nn.Module) -> tuple:
    """What a compiled function of this model's architecture depends on: its layers and their modes."""
    return repr(model), tuple(m.training for m in model.modules())


def cached_compile(key: tuple, build, device: torch.device, **options):
    """torch.compile(build()) once per key, with compile_options(device, **options)."""
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(build(), dynamic=False, **compile_options(device, **options))
    return _COMPILED[key]


def run_or_fall_back(compiled_fn, eager_fn, *args):
    """compiled_fn(*args); if compiling or running it fails, say so once and use eager_fn from then on."""
    if fast_path_available():
        try:
            return compiled_fn(*args)
        except Exception as err:  # a platform where compiling fails: keep going, eagerly
            _give_up(err)
    return eager_fn(*args)


def _give_up(err: Exception) -> None:
    _BROKEN.append(f"{type(err).__name__}: {err}")
    get_logger().warning("compiled fast path unavailable (%s); using the eager path",
                         " ".join(str(err).split())[:200])


def _compiled_step(models: Sequence[nn.Module], momentum: float, weight_decay: float, device: torch.device):
    key = ("sgd_step", *model_key(models[0]), str(device), len(models), float(momentum), float(weight_decay))
    return cached_compile(key, lambda: _sgd_step_function(copy.deepcopy(models[0]).to("meta"), momentum,
                                                          weight_decay), device)


class _StaticStep:
    """The compiled step of one architecture over persistent tensors: the parameters, buffers, momenta and lr
    live here, and each call updates them in place. On CUDA the call is a replay of a CUDA graph captured once
    per batch shape (its only copies: the batch into its static slot). A trainer takes the tensors over by
    copying its state in (the previous owner copies its own out first), so DC's fresh network of every
    iteration reuses the graph."""

    def __init__(self, step, params: dict, buffers: dict, momenta: dict, lr: torch.Tensor):
        self.step = step
        self.params = {name: value.detach().clone() for name, value in params.items()}
        self.buffers = {name: value.detach().clone() for name, value in buffers.items()}
        self.momenta = {name: value.clone() for name, value in momenta.items()}
        self.lr = lr.clone()
        self.capture = lr.is_cuda
        self._graphs: dict[tuple, tuple] = {}  # batch shapes -> (graph, x slot, y slot, losses, logits)
        self._owner = lambda: None

    def take_over(self, trainer: CompiledTrainer) -> None:
        """Put `trainer`'s state into the persistent tensors; the trainer then holds them as its own."""
        previous = self._owner()
        if previous is trainer:
            return
        if previous is not None:
            previous._let_go()
        with torch.no_grad():
            for mine, theirs in ((self.params, trainer.params), (self.buffers, trainer.buffers),
                                 (self.momenta, trainer.momenta)):
                for name, value in mine.items():
                    value.copy_(theirs[name])
            self.lr.copy_(trainer.lr)
        trainer.params, trainer.buffers, trainer.momenta, trainer.lr = self.params, self.buffers, self.momenta, self.lr
        self._owner = weakref.ref(trainer)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step in place; the losses and logits returned are overwritten by the next call."""
        if not self.capture:
            return self._in_place(x, y)
        key = (tuple(x.shape), x.dtype, tuple(y.shape))
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, y)
        graph, x_slot, y_slot, losses, logits = self._graphs[key]
        x_slot.copy_(x)
        y_slot.copy_(y)
        graph.replay()
        return losses, logits

    def _in_place(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params, momenta, losses, logits = self.step(self.params, self.buffers, self.momenta, x, y, self.lr)
        with torch.no_grad():
            for name, value in params.items():
                self.params[name].copy_(value)
                self.momenta[name].copy_(momenta[name])
        return losses, logits

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        x_slot, y_slot = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile, autotune and let cuDNN pick its kernels outside the capture
            for _ in range(2):
                self.step(self.params, self.buffers, self.momenta, x_slot, y_slot, self.lr)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            losses, logits = self._in_place(x_slot, y_slot)
        return graph, x_slot, y_slot, losses, logits


_STATIC: dict[object, _StaticStep] = {}  # compiled step -> its persistent tensors and graphs


class CompiledTrainer:
    """SGD on K models (no BatchNorm) through one compiled step; same interface as the eager trainer."""

    def __init__(self, models: Sequence[nn.Module], schedule, eager_fallback):
        self.models = list(models)
        self.schedule = schedule
        params, self.buffers = stack_module_state(self.models)
        self.params = {name: value.detach() for name, value in params.items()}
        self.momenta = {name: torch.zeros_like(value) for name, value in self.params.items()}
        device = next(iter(self.params.values())).device
        self.lr = torch.full((), float(schedule.lr), device=device)  # a fill: no copy from the host
        self._step = _compiled_step(self.models, schedule.momentum, schedule.weight_decay, device)
        self._static = device.type in STATIC_STEP_DEVICES
        self._eager_fallback = eager_fallback  # () -> an eager trainer of the same models
        self._eager = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every model on its batch x (K, B, ...): per-sample losses and logits (on CUDA they
        are overwritten by the next step: use them first)."""
        if self._eager is not None:
            return self._eager.step(x, y)
        try:
            if self._static:
                static = _STATIC.get(self._step)
                if static is None:
                    static = _STATIC[self._step] = _StaticStep(self._step, self.params, self.buffers, self.momenta,
                                                               self.lr)
                static.take_over(self)
                return static(x, y)
            params, momenta, losses, logits = self._step(self.params, self.buffers, self.momenta, x, y, self.lr)
        except Exception as err:  # a platform where compiling (or capturing) fails: keep going, eagerly
            _give_up(err)
            self.write_back()
            self._eager = self._eager_fallback()
            self._eager.set_lr(float(self.lr), restart=False)
            return self._eager.step(x, y)
        self.params, self.momenta = params, momenta
        return losses, logits

    def _let_go(self) -> None:
        """Another trainer takes the persistent tensors: keep a copy of this one's state."""
        self.params = {name: value.clone() for name, value in self.params.items()}
        self.buffers = {name: value.clone() for name, value in self.buffers.items()}
        self.momenta = {name: value.clone() for name, value in self.momenta.items()}
        self.lr = self.lr.clone()

    def set_lr(self, lr: float, restart: bool) -> None:
        if self._eager is not None:
            self._eager.set_lr(lr, restart)
            return
        self.lr.fill_(lr)
        if restart:  # a fresh SGD: momentum starts again (in place: the tensors may be a graph's)
            for value in self.momenta.values():
                value.zero_()

    def write_back(self) -> None:
        if self._eager is not None:
            self._eager.write_back()
            return
        with torch.no_grad():
            for k, model in enumerate(self.models):
                for name, param in model.named_parameters():
                    param.copy_(self.params[name][k])
