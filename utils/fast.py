"""Fast paths: compiled functional training steps (torch.compile; replayed as CUDA graphs on CUDA).

An eager SGD step of a small network is ~60 tiny kernels launched one by one, plus optimizer kernels: on a
GPU the step is launch-bound (the GPU waits on launches, not on arithmetic). Here the whole step — forward, backward,
weight decay, momentum, update — of K stacked models is ONE function of plain tensors:

    (params, buffers, momenta, x, y, lr) -> (new params, new momenta, per-sample losses, logits)

which torch.compile turns into a few fused kernels (norm + activation + pooling passes fused by inductor)
and, with mode "reduce-overhead" on CUDA, into one CUDA-graph replay. Random draws (batch order,
augmentation) stay outside, so a run is reproducible from its seed exactly as the eager path is.

The maths is torch.optim.SGD's (dampening 0, no Nesterov): d = g + wd*p, m = momentum*m + d, p = p - lr*m,
with m starting at 0 (equal to SGD's first-step m = d). Results match the eager path to float rounding
(fused kernels sum in another order): tests/test_fast.py states the tolerances.

A compiled function is built once per (architecture, device, number of models, momentum, weight decay) and
reused: DC builds a fresh network every iteration, and its inner loop must not recompile each time.
If compiling fails on some platform, the process logs it once and falls back to the eager step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from utils.log import get_logger

_COMPILED: dict[tuple, object] = {}
_BROKEN: list[str] = []  # why the fast path was given up in this process (empty: it works)


def compile_options(device: torch.device) -> dict:
    """torch.compile keyword arguments per device: CUDA graphs on CUDA; plain inductor elsewhere."""
    return {"mode": "reduce-overhead"} if device.type == "cuda" else {}


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
    """torch.compile(build()) once per key (compile_options(device) unless options are given)."""
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(build(), dynamic=False, **(options or compile_options(device)))
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
        self._eager_fallback = eager_fallback  # () -> an eager trainer of the same models
        self._eager = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eager is not None:
            return self._eager.step(x, y)
        try:
            if x.is_cuda:
                torch.compiler.cudagraph_mark_step_begin()
            params, momenta, losses, logits = self._step(self.params, self.buffers, self.momenta, x, y, self.lr)
        except Exception as err:  # a platform where compiling fails: keep going, eagerly
            _give_up(err)
            self.write_back()
            self._eager = self._eager_fallback()
            self._eager.set_lr(float(self.lr), restart=False)
            return self._eager.step(x, y)
        # Outputs of a CUDA-graph replay live in the graph's memory and are overwritten by the next replay.
        self.params = {name: value.clone() for name, value in params.items()}
        self.momenta = {name: value.clone() for name, value in momenta.items()}
        return losses.clone(), logits.clone()

    def set_lr(self, lr: float, restart: bool) -> None:
        if self._eager is not None:
            self._eager.set_lr(lr, restart)
            return
        self.lr.fill_(lr)
        if restart:  # a fresh SGD: momentum starts again
            self.momenta = {name: torch.zeros_like(value) for name, value in self.params.items()}

    def write_back(self) -> None:
        if self._eager is not None:
            self._eager.write_back()
            return
        with torch.no_grad():
            for k, model in enumerate(self.models):
                for name, param in model.named_parameters():
                    param.copy_(self.params[name][k])
