"""Train and test networks: one at a time, or many at once as a stacked ensemble.

Models without BatchNorm can be trained together: their parameters are stacked (torch.func) and one
vmapped forward/backward serves all of them. By default this happens on CUDA for small training sets
(one batch per epoch: synthetic sets), where it pays; full data sets and CPUs train one after another
(see _groups for the measurements).
Each model still has its own seed, its own batch order and its own augmentation stream, and SGD is
element-wise, so every model takes exactly the steps it would take alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from networks import build_network, supports_stacking
from utils.augment import Augment, DSAAugmenter
from utils.distributed import gather_objects, split_range
from utils.fast import CompiledTrainer, fast_path_available
from utils.log import progress_disabled
from utils.runtime import Runtime, training_steps
from utils.seeding import make_generator


class ImageSource(Protocol):
    """Labelled images on one device: a loaded data split (utils.data.ImageSet) or a TensorSource."""

    labels: torch.Tensor  # (N,) long
    num_classes: int

    def __len__(self) -> int: ...

    def images(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """float32 (n, C, H, W) network inputs; idx None = all."""
        ...


class TensorSource:
    """An (images, labels) pair as an ImageSource, e.g. a synthetic set."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None):
        self._images, self.labels, self._num_classes = images, labels, num_classes

    @property
    def num_classes(self) -> int:
        """As given, else the largest label + 1 (read from the device only when asked)."""
        if self._num_classes is None:
            self._num_classes = int(self.labels.max()) + 1
        return self._num_classes

    def __len__(self) -> int:
        return self.labels.shape[0]

    def images(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self._images if idx is None else self._images[idx]


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()  # lr *= gamma once this many epochs are done
    gamma: float = 0.1
    restart_optimizer: bool = False  # the paper's synthetic-set evaluation builds a fresh SGD at the decay
    augment: Augment | None = None  # applied to every training batch, each model with its own generator


@dataclass(frozen=True)
class EpochHook:
    """`call(epoch, model_ids, models)` every `every` epochs and after the last, with the trained weights in
    the modules (e.g. to test or save them)."""

    call: Callable[[int, list[int], list[nn.Module]], None]
    every: int = 1


class _Stack:
    """K models of one architecture as stacked parameter tensors with a vmapped forward."""

    def __init__(self, models: Sequence[nn.Module]):
        self.models = list(models)
        self.params, self.buffers = stack_module_state(self.models)
        base = copy.deepcopy(self.models[0]).to("meta")

        def call(params, buffers, x):
            return functional_call(base, (params, buffers), (x,))

        self._per_model = vmap(call)  # x: (K, B, ...) — each model its own batch
        self._shared = vmap(call, in_dims=(0, 0, None))  # x: (B, ...) — every model the same batch

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._per_model(self.params, self.buffers, x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._shared(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> None:
        for model in self.models:
            model.train(mode)

    def write_back(self) -> None:
        with torch.no_grad():
            for k, model in enumerate(self.models):
                state = {name: value[k] for name, value in {**self.params, **self.buffers}.items()}
                model.load_state_dict(state)


class _Single:
    """One model behind the same interface as _Stack (for BatchNorm models, which cannot be vmapped)."""

    def __init__(self, model: nn.Module):
        self.models = [model]

    def parameters(self) -> list[torch.Tensor]:
        return list(self.models[0].parameters())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.models[0](x[0]).unsqueeze(0)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.models[0](x).unsqueeze(0)

    def train(self, mode: bool = True) -> None:
        self.models[0].train(mode)

    def write_back(self) -> None:
        pass


class _EagerTrainer:
    """SGD on a _Stack or _Single with torch.optim: forward, backward, step."""

    def __init__(self, runner, schedule: Schedule):
        self.runner, self.schedule = runner, schedule
        self.optimizer = _sgd(runner.parameters(), schedule, schedule.lr)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every model on its batch x (K, B, ...); returns per-sample losses and logits."""
        logits = self.runner(x)
        k = x.shape[0]
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, -1)
        loss = losses.mean(dim=1).sum()  # d(sum of per-model means)/d(model k) = model k's own gradient
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return losses.detach(), logits.detach()

    def write_back(self) -> None:
        """The trained weights into the nn.Modules."""
        self.runner.write_back()

    def set_lr(self, lr: float, restart: bool) -> None:
        if restart:
            self.optimizer = _sgd(self.runner.parameters(), self.schedule, lr)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr


def _groups(models: Sequence[nn.Module], stack: bool | None,
            batches_per_epoch: int = 1) -> list[tuple[list[int], object]]:
    """Split model ids into runners: stacked chunks where possible, single models otherwise.

    stack=None stacks only on CUDA and only when an epoch is one batch (a synthetic set): there each model's
    step is a few small kernels that leave the GPU idle, and one vmapped ensemble fills it. With more data
    each model's batches already fill the GPU, and on a CPU stacking does not pay (README, *Benchmarks*).
    """
    ids = list(range(len(models)))
    if stack is None:
        stack = bool(models) and next(models[0].parameters()).is_cuda and batches_per_epoch == 1
    if stack and len(models) > 1 and all(supports_stacking(m) for m in models):
        return [(ids, _Stack(models))]
    return [([i], _Single(models[i])) for i in ids]


def _sgd(params, schedule: Schedule, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)


def _trainer(runner, schedule: Schedule, compiled: bool):
    """The compiled step where asked for and possible (no BatchNorm), else torch.optim's."""
    models = runner.models
    if compiled and fast_path_available() and all(supports_stacking(m) for m in models):
        rebuild = lambda: _EagerTrainer(_Stack(models) if len(models) > 1 else _Single(models[0]), schedule)
        return CompiledTrainer(models, schedule, rebuild)
    return _EagerTrainer(runner, schedule)


def _train_runner(runner, source, schedule: Schedule, generators, hook: EpochHook | None, model_ids,
                  progress: tqdm | None, compiled: bool = False) -> None:
    augment = schedule.augment
    n, k = len(source), len(generators)
    labels = source.labels
    lr = schedule.lr
    trainer = _trainer(runner, schedule, compiled)
    runner.train()
    for epoch in range(1, schedule.epochs + 1):
        # Each model draws its own batch order from its own generator (as if trained alone).
        order = torch.stack([torch.randperm(n, generator=g, device=g.device) for g in generators]).to(labels.device)
        loss_sum = torch.zeros((), device=labels.device)  # summed on the device: no sync per step
        correct = torch.zeros((), device=labels.device)
        for start in range(0, n, schedule.batch_size):
            idx = order[:, start : start + schedule.batch_size]
            flat = source.images(idx.reshape(-1))
            x = flat.view(k, idx.shape[1], *flat.shape[1:])
            y = labels[idx]
            if isinstance(augment, DSAAugmenter):  # one call for the whole ensemble
                x = augment.members(x, generators)
            elif augment is not None:
                x = torch.stack([augment(x[m], generators[m]) for m in range(k)])
            losses, logits = trainer.step(x, y)
            loss_sum += losses.sum()
            correct += (logits.argmax(-1) == y).sum()
        if epoch in schedule.milestones:
            lr *= schedule.gamma
            trainer.set_lr(lr, schedule.restart_optimizer)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss_sum.item() / (n * k):.4f}", acc=f"{correct.item() / (n * k):.4f}")
        if hook is not None and (epoch % hook.every == 0 or epoch == schedule.epochs):
            trainer.write_back()
            hook.call(epoch, model_ids, runner.models)
            runner.train()
    trainer.write_back()


def train_models(models: Sequence[nn.Module], source: ImageSource, schedule: Schedule,
                 generators: Sequence[torch.Generator], *, hook: EpochHook | None = None, stack: bool | None = None,
                 compiled: bool = False, desc: str | None = None) -> list[nn.Module]:
    """Train `models` (already on the data's device) with SGD + cross-entropy, in place.

    generators[k] drives model k's batch order and augmentation; `hook` sees the models during training;
    compiled=True uses the compiled step (utils/fast.py) for models without BatchNorm.
    """
    if len(generators) != len(models):
        raise ValueError("one generator per model is needed")
    groups = _groups(models, stack, batches_per_epoch=math.ceil(len(source) / schedule.batch_size))
    total = schedule.epochs * len(groups)
    with tqdm(total=total, desc=desc, disable=progress_disabled() or desc is None, leave=False) as progress:
        shown = None if progress.disable else progress  # a hidden bar must not read the loss every epoch
        for ids, runner in groups:
            _train_runner(runner, source, schedule, [generators[i] for i in ids], hook, ids, shown, compiled)
    return list(models)


@torch.no_grad()
def evaluate_models(models: Sequence[nn.Module], source, batch_size: int = 1024,
                    stack: bool | None = None) -> list[float]:
    """Test accuracy of each model on `source` (every model sees the same batches)."""
    accuracies = [0.0] * len(models)
    for ids, runner in _groups(models, stack, batches_per_epoch=math.ceil(len(source) / batch_size)):
        runner.train(False)
        correct = torch.zeros(len(ids), device=source.labels.device)
        for start in range(0, len(source), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(source)), device=source.labels.device)
            logits = runner.predict(source.images(idx))
            correct += (logits.argmax(-1) == source.labels[idx]).sum(dim=1)
        for slot, i in enumerate(ids):
            accuracies[i] = correct[slot].item() / len(source)
    return accuracies


def build_seeded_network(name: str, channel: int, num_classes: int, im_size, seed: int,
                         device: torch.device | str = "cpu") -> nn.Module:
    """Build a network whose initial weights depend only on `seed` (global RNG state restored after). It is
    built on the CPU (the same weights for every device); on CUDA its weights then travel in one copy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(name, channel, num_classes, im_size)
    device = torch.device(device)
    return move_in_one_copy(model, device) if device.type == "cuda" else model.to(device)


FLAT_ALIGNMENT = 16  # elements: every tensor starts 64-byte aligned (compiled kernels copy unaligned inputs)


def move_in_one_copy(model: nn.Module, device: torch.device, pin: bool = True) -> nn.Module:
    """model.to(device) as one non-blocking copy per dtype from pinned memory: `.to` copies each parameter on
    its own and waits for the device each time. The parameters and buffers become aligned views of one flat
    device tensor per dtype, with the same values bit for bit."""
    tensors = [*model.parameters(), *model.buffers()]
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [t for t in tensors if t.dtype == dtype]
        starts, end = [], 0
        for t in group:
            starts.append(end)
            end += -(-t.numel() // FLAT_ALIGNMENT) * FLAT_ALIGNMENT
        flat = torch.zeros(end, dtype=dtype, pin_memory=pin)
        for t, start in zip(group, starts):
            flat[start:start + t.numel()].copy_(t.detach().reshape(-1))
        flat = flat.to(device, non_blocking=pin)
        for t, start in zip(group, starts):
            t.data = flat[start:start + t.numel()].view(t.shape)
    return model


@dataclass
class EvalResult:
    """Per network: test accuracy after the last epoch, the best one seen and when (and its weights)."""

    final: list[float]
    best: list[float]
    best_epoch: list[int]
    best_states: list[dict] | None = None
    diverged: list[int | None] = field(default_factory=list)  # first tested epoch with NaN/inf weights, or None

    def divergences(self) -> list[tuple[int, int]]:
        """(network, epoch) of every network whose weights turned NaN/inf: its accuracy is a broken network's."""
        return [(k, epoch) for k, epoch in enumerate(self.diverged) if epoch is not None]


@dataclass(frozen=True)
class NetworkSpec:
    """Which network to build for a data set: architecture name, input channels, classes, (H, W)."""

    name: str
    channel: int
    num_classes: int
    im_size: tuple[int, int]

    def build(self, seed: int, device: torch.device | str = "cpu") -> nn.Module:
        return build_seeded_network(self.name, self.channel, self.num_classes, self.im_size, seed, device)


def train_and_test(network: NetworkSpec, seeds: Sequence[int], train_source: ImageSource, test_source: ImageSource,
                   schedule: Schedule, *, runtime: Runtime, test_every: int | None = None,
                   keep_best_states: bool = False) -> EvalResult:
    """Train one fresh `network` per seed on `train_source` and test them (every `test_every` epochs and at
    the end). Under torchrun the networks are split across ranks and the results gathered everywhere."""
    dist, device = runtime.dist, runtime.device
    mine = split_range(len(seeds), dist)
    models = [network.build(seeds[i], device) for i in mine]
    generators = [make_generator(seeds[i], device) for i in mine]
    best = [-1.0] * len(mine)
    best_epoch = [0] * len(mine)
    best_states: list = [None] * len(mine)
    final = [0.0] * len(mine)
    diverged: list[int | None] = [None] * len(mine)

    def test(epoch: int, ids: list[int], trained) -> None:
        for slot, model, acc in zip(ids, trained, evaluate_models(trained, test_source)):
            final[slot] = acc
            if diverged[slot] is None and not all(torch.isfinite(p).all() for p in model.parameters()):
                diverged[slot] = epoch  # its accuracy is that of a broken network, not of the training set
            if acc > best[slot]:
                best[slot], best_epoch[slot] = acc, epoch
                if keep_best_states:
                    best_states[slot] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    if models:
        hook = EpochHook(test, test_every or schedule.epochs or 1)
        # All the networks, not this rank's share: the weights must not depend on torchrun's split.
        steps = training_steps(len(seeds), schedule.epochs, len(train_source), schedule.batch_size)
        train_models(models, train_source, schedule, generators, hook=hook, compiled=runtime.compiles_training(steps),
                     desc=f"train {network.name}")
        if schedule.epochs == 0:
            test(0, list(range(len(models))), models)
    parts = gather_objects(dist, (final, best, best_epoch, best_states if keep_best_states else None, diverged))
    result = EvalResult([], [], [], [] if keep_best_states else None)
    for part_final, part_best, part_epoch, part_states, part_diverged in parts:
        result.final += part_final
        result.best += part_best
        result.best_epoch += part_epoch
        result.diverged += part_diverged
        if keep_best_states:
            result.best_states += part_states
    return result


def paper_eval_schedule(epochs: int, lr: float, batch_size: int, augment: Augment | None = None) -> Schedule:
    """The paper's synthetic-set evaluation: epochs+1 passes, SGD(momentum .9, wd 5e-4), and after the pass
    numbered epochs//2+1 (0-based) a fresh optimizer at lr×0.1."""
    return Schedule(epochs=epochs + 1, batch_size=batch_size, lr=lr, milestones=(epochs // 2 + 2,),
                    restart_optimizer=True, augment=augment)
