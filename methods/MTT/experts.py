"""Training experts for MTT: networks trained on the real data with their parameters kept after every epoch.

As MTT's buffer.py: SGD (lr_teacher, momentum mom, weight decay l2), cross-entropy, batch_train, DSA augmentation
of every batch (one op per batch, every image its own parameters, the DSA code's align_corners=True), or MTT's
DC augmentation crop_scale_rotate without DSA; with `decay` the lr drops x0.1 (a fresh optimizer) after the
epoch MTT numbers train_epochs // 2 + 1 (0-based). Expert k's weights and draws come from its own seed, so it is
the same expert whether trained alone, beside others in one stacked ensemble, or after a resumed crash.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.MTT.replay_buffer import Expert
from utils.augment import DSAParams, dc_augmenter, dsa_augmenter
from utils.data import LoadedDataset
from utils.engine import EpochHook, Schedule, build_seeded_network, evaluate_models, train_models
from utils.errors import UserError
from utils.runtime import Runtime
from utils.seeding import derive_seed, make_generator

WHOLE_DATA_DC_STRATEGY = "crop_scale_rotate"  # MTT's buffer.py without DSA


@dataclass(frozen=True)
class ExpertSettings:
    """Everything that shapes an expert (MTT's buffer.py flags)."""

    dataset: str
    model: str
    zca: bool
    train_epochs: int = 50
    lr_teacher: float = 0.01
    batch_train: int = 256
    mom: float = 0.0
    l2: float = 0.0
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    decay: bool = False


class NonFiniteExpertError(UserError):
    """An expert's weights became NaN/inf; the experts saved before are kept."""


def expert_seed(seed: int, index: int) -> int:
    """Expert `index` of a run with seed `seed`: its initial weights, batch order and augmentation."""
    return derive_seed(seed, "expert", index)


def expert_schedule(settings: ExpertSettings) -> Schedule:
    augment = (dsa_augmenter(settings.dsa_strategy, DSAParams()) if settings.dsa
               else dc_augmenter(WHOLE_DATA_DC_STRATEGY))
    milestones = (settings.train_epochs // 2 + 2,) if settings.decay else ()  # epochs done when MTT decays
    return Schedule(epochs=settings.train_epochs, batch_size=settings.batch_train, lr=settings.lr_teacher,
                    momentum=settings.mom, weight_decay=settings.l2, milestones=milestones, restart_optimizer=True,
                    augment=augment)


def parameters_of(model: nn.Module) -> list[torch.Tensor]:
    """One entry of a trajectory: the parameters in model.parameters() order, on the CPU."""
    return [p.detach().cpu().clone() for p in model.parameters()]


def train_experts(settings: ExpertSettings, data: LoadedDataset, seeds: list[int], runtime: Runtime, *,
                  compiled: bool = False, stack: bool = False, log=None) -> list[tuple[Expert, list[float]]]:
    """Train one expert per seed (stack=True: as one stacked ensemble where the architecture allows); returns each
    expert's trajectory (train_epochs + 1 parameter lists) and its test accuracy after every epoch."""
    spec, device = data.spec, runtime.device
    models = [build_seeded_network(settings.model, spec.channel, spec.num_classes, spec.im_size, s, device)
              for s in seeds]
    trajectories: list[Expert] = [[parameters_of(model)] for model in models]
    accuracies: list[list[float]] = [[] for _ in models]

    def record(epoch: int, ids: list[int], trained) -> None:
        for slot, model, acc in zip(ids, trained, evaluate_models(trained, data.test)):
            weights = parameters_of(model)
            if not all(torch.isfinite(w).all() for w in weights):
                raise NonFiniteExpertError(f"an expert's weights became NaN/inf in epoch {epoch} (its loss "
                                           "diverged); try a smaller --lr_teacher")
            trajectories[slot].append(weights)
            accuracies[slot].append(acc)
            if log is not None:
                log(slot, epoch, acc)

    generators = [make_generator(s, device) for s in seeds]
    with runtime.autocast():
        train_models(models, data.train, expert_schedule(settings), generators, hook=EpochHook(record, 1),
                     stack=stack, compiled=compiled, desc=f"experts {settings.model}")
    return list(zip(trajectories, accuracies))
