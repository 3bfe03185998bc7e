"""The host never waits for the device in a distillation's steady state: the non-finite-loss check on the
device (against the obvious check before every step), no reads from the device between the loop's own reads,
and the same draws and sets as before."""

import copy

import pytest
import torch

from methods.DC_DSA_DM.loss_guard import LossGuard


def _steps(images, optimizer, iterations, steps_per_iteration, bad_at, on_loss, on_begin=None):
    """SGD on `images` with a loss that turns nan at step bad_at (a flat step index)."""
    for it in range(iterations):
        if on_begin is not None:
            on_begin(it)
        for s in range(steps_per_iteration):
            loss = (images - it - s).pow(2).sum()
            if it * steps_per_iteration + s >= bad_at:
                loss = loss * float("nan")
            if on_loss(loss.detach(), it):
                return
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def _start(resumed: bool):
    images = torch.linspace(-1, 1, 12).view(3, 4).requires_grad_()
    optimizer = torch.optim.SGD([images], lr=0.01, momentum=0.5)
    if resumed:  # a run continued from a checkpoint: the momentum exists from the first iteration on
        images.grad = torch.ones_like(images)
        optimizer.step()
    return images, optimizer


@pytest.mark.parametrize("resumed", [False, True])
@pytest.mark.parametrize("bad_at", [0, 1, 2, 3, 7, 100])
def test_loss_guard_keeps_what_a_check_before_every_step_keeps(bad_at, resumed):
    # the obvious version: read every loss, keep the state before each iteration, stop at the first bad one
    images, optimizer = _start(resumed)
    kept = {}

    def check_now(loss, it):
        if not torch.isfinite(loss):
            kept["bad"] = (it, float(loss))
            return True
        return False

    def keep(it):
        kept.update(it=it, images=images.detach().clone(), state=copy.deepcopy(optimizer.state_dict()))

    _steps(images, optimizer, 5, 2, bad_at, check_now, keep)
    # the guard: nothing read until the end, the steps go on with nan
    images, optimizer = _start(resumed)
    guard = LossGuard(images, optimizer)
    _steps(images, optimizer, 5, 2, bad_at, lambda loss, it: guard.record(loss, it), guard.begin)
    it, good_images, state = guard.last_good()
    bad = guard.first_bad()
    assert bad == (None if "bad" not in kept else (kept["bad"][0], pytest.approx(float("nan"), nan_ok=True)))
    assert it == kept["it"] and torch.equal(good_images, kept["images"])
    assert state["param_groups"] == kept["state"]["param_groups"]
    assert state["state"].keys() == kept["state"]["state"].keys()
    for key, entries in kept["state"]["state"].items():
        assert entries.keys() == state["state"][key].keys()
        assert all(torch.equal(state["state"][key][name], value) for name, value in entries.items())
