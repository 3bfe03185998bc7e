"""The non-finite-loss check, kept on the device so that no step waits for the host to read its loss.

Every image step folds its loss into three device tensors: whether any loss was non-finite yet, the first
such iteration and that loss. At the start of every iteration the synthetic images and the optimizer's state
(SGD momentum) are copied aside unless a bad loss was already seen, so after a bad loss the copy is the state
before the first bad iteration. The loop reads the flag only at its own cadence (logging, checkpoints,
evaluations, the end, an interrupt), before anything is saved. What it saves is then exactly what a check
before every step kept: the set and momentum before the iteration whose loss was first non-finite.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor


class LossGuard:
    """The last good state of one experiment's synthetic images and their optimizer (one parameter group
    holding `images` alone, as distill.py builds it)."""

    def __init__(self, images: Tensor, optimizer: torch.optim.Optimizer):
        self.images, self.optimizer = images, optimizer
        device = images.device
        self._bad = torch.zeros((), dtype=torch.bool, device=device)
        self._first = torch.full((), -1, dtype=torch.long, device=device)
        self._value = torch.zeros((), dtype=torch.float64, device=device)
        self._kept_images: Tensor | None = None
        self._kept_state: dict[str, Tensor] = {}  # the optimizer's per-image state entries, as kept
        self._state_from: dict[str, int] = {}  # the first iteration whose starting state held each entry
        self.iteration = -1  # the iteration whose starting state is kept (while no loss was bad)

    def begin(self, it: int) -> None:
        """Keep the state before iteration `it`, unless a loss was already non-finite (no read-back)."""
        images = self.images.detach()
        if self._kept_images is None:
            self._kept_images = images.clone()
        else:
            torch.where(self._bad, self._kept_images, images, out=self._kept_images)
        for key, value in self.optimizer.state.get(self.images, {}).items():
            if key not in self._kept_state:  # appeared with the last step: kept from this iteration on
                self._kept_state[key], self._state_from[key] = value.detach().clone(), it
            else:
                torch.where(self._bad, self._kept_state[key], value, out=self._kept_state[key])
        self.iteration = it

    def record(self, loss: Tensor, it: int) -> None:
        """Note the loss of a step of iteration `it` (already summed over processes), on the device."""
        new = ~torch.isfinite(loss) & ~self._bad
        self._first.masked_fill_(new, it)
        torch.where(new, loss.detach().to(self._value.dtype), self._value, out=self._value)
        self._bad |= new

    def first_bad(self) -> tuple[int, float] | None:
        """(iteration, loss) of the first non-finite loss, or None: one read from the device."""
        first = int(self._first)
        return None if first < 0 else (first, float(self._value))

    def last_good(self) -> tuple[int, Tensor, dict]:
        """(next iteration, images, optimizer state dict) before the first bad iteration, or before the
        current one when no loss was bad: what a checkpoint written now must hold."""
        bad = self.first_bad()
        it = self.iteration if bad is None else bad[0]
        entries = {key: value.clone() for key, value in self._kept_state.items() if self._state_from[key] <= it}
        state_dict = self.optimizer.state_dict()
        kept = {"state": {0: entries} if entries else {}, "param_groups": copy.deepcopy(state_dict["param_groups"])}
        return it, self._kept_images.clone(), kept
