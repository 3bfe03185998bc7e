"""The experts a distillation reads: which buffer files, which expert and epochs each iteration, and the experts'
weights as a CLoM pool.

Files are memory-mapped, so every expert is at hand without reading the buffer into memory (an iteration reads
two epochs of one expert). MTT's default order is reproduced in distribution: every expert once per pass, in a
fresh random order each pass (MTT shuffles the files and the experts within each); --load_all draws an expert
uniformly each iteration, as MTT does then. --max_files takes that many files of a seeded shuffle and
--max_experts the first experts of each. Every draw comes from (seed, experiment, iteration).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from methods.MTT.replay_buffer import Expert, load_experts
from networks import build_network, has_batchnorm
from utils.errors import UserError
from utils.pools import InputSpace, PoolArch, PoolMember
from utils.seeding import derive_seed, make_generator


class ExpertSet:
    def __init__(self, files: list[Path], seed: int, load_all: bool = False, max_files: int | None = None,
                 max_experts: int | None = None):
        self.files = list(files)
        if max_files is not None:
            order = torch.randperm(len(files), generator=make_generator(derive_seed(seed, "expert files")))
            self.files = [files[i] for i in order[:max_files].tolist()]
        self.experts: list[Expert] = []
        for path in self.files:
            experts = load_experts(path)[:max_experts]
            for k, expert in enumerate(experts):
                if all(torch.equal(first, last) for first, last in zip(expert[0], expert[-1])):
                    raise UserError(f"{path}: expert {k} has the same weights at every epoch (MTT's buffer.py run on a "
                                    "CPU stores views of the live weights, so every epoch is the last one); make the "
                                    "experts with methods/MTT/buffer.py")
            self.experts += experts
        self.seed, self.load_all = seed, load_all

    def __len__(self) -> int:
        return len(self.experts)

    @property
    def epochs(self) -> int:
        """Epochs every expert has (the shortest trajectory's count less its initial weights)."""
        return min(len(expert) for expert in self.experts) - 1

    def expert_for(self, exp: int, it: int) -> int:
        if self.load_all:
            generator = make_generator(derive_seed(self.seed, "expert", exp, it))
            return int(torch.randint(len(self), (1,), generator=generator))
        passes, position = divmod(it, len(self))
        order = torch.randperm(len(self), generator=make_generator(derive_seed(self.seed, "expert order", exp, passes)))
        return int(order[position])

    def check_epochs(self, max_start_epoch: int, expert_epochs: int) -> None:
        need = max_start_epoch - 1 + expert_epochs  # the latest epoch a target can come from
        if need > self.epochs:
            raise UserError(f"the experts have {self.epochs} epochs, but --max_start_epoch {max_start_epoch} and "
                            f"--expert_epochs {expert_epochs} need epoch {need}: lower them, or train longer experts "
                            "(buffer.py --train_epochs)")


def expert_pool(experts: ExpertSet, architecture: str, count: int, epoch: int | None, spec, space: InputSpace,
                device) -> list[PoolArch]:
    """The first `count` experts (file order) at `epoch` (None: their last) as a frozen CLoM pool of one
    architecture. They saw the distillation's own inputs, so their input space is the target's."""
    if count > len(experts):
        raise UserError(f"--CLoM_experts {count}: the buffer holds {len(experts)} experts")
    last = experts.epochs
    epoch = last if epoch is None else epoch
    if not 0 <= epoch <= last:
        raise UserError(f"--CLoM_expert_epoch {epoch}: the experts have epochs 0..{last}")
    members = []
    for k in range(count):
        model = build_network(architecture, spec.channel, spec.num_classes, spec.im_size)
        if has_batchnorm(model):
            raise UserError(f"{architecture} has BatchNorm, whose running statistics expert trajectories do not keep; "
                            "use a pool trained by train_original_models.py")
        load_parameters(model, experts.experts[k][epoch])
        model = model.to(device).eval().requires_grad_(False)
        members.append(PoolMember(model, space, None, f"expert {k}, epoch {epoch}", spec.num_classes))
    return [PoolArch(f"experts:{architecture}", members)]


def load_parameters(model: torch.nn.Module, parameters: list[Tensor]) -> None:
    """One trajectory entry (parameters in model.parameters() order) into the model."""
    own = list(model.parameters())
    if len(own) != len(parameters) or any(p.shape != q.shape for p, q in zip(own, parameters)):
        raise UserError(f"the experts' parameters {[tuple(q.shape) for q in parameters]} do not fit "
                        f"{type(model).__name__}'s {[tuple(p.shape) for p in own]}: were they trained with this "
                        "--model and --dataset?")
    with torch.no_grad():
        for p, q in zip(own, parameters):
            p.copy_(q)
