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


# ------------------------------------------------------------------------------------------------ draws
def test_randint_on_host_is_the_plain_draw_and_leaves_the_generator_where_the_plain_draw_does():
    from utils.seeding import make_generator, randint_on_host

    plain, ours = make_generator(5), make_generator(5)
    expected = torch.randint(6, (10,), generator=plain)
    values, host = randint_on_host(6, 10, ours)
    assert torch.equal(values, expected) and host == expected.tolist()
    assert torch.equal(torch.rand(4, generator=ours), torch.rand(4, generator=plain))


def test_dsa_plan_with_counts_on_the_host_equals_counts_read_back():
    from utils.augment import DEFAULT_DSA_STRATEGY, DISTILLATION_DSA, apply_dsa_plan, draw_dsa_plan
    from utils.seeding import make_generator

    x = torch.randn(7 * 5, 3, 8, 8)
    groups = torch.arange(7).repeat_interleave(5)
    for seed in range(4):
        plan = draw_dsa_plan(DEFAULT_DSA_STRATEGY.split("_"), 7, x.shape, make_generator(seed), "cpu", DISTILLATION_DSA)
        assert plan.chosen == plan.choice.tolist()
        assert torch.equal(apply_dsa_plan(x, plan, groups, DISTILLATION_DSA, per_group=5),
                           apply_dsa_plan(x, plan, groups, DISTILLATION_DSA))


# ------------------------------------------------------------------------------------------------ networks
def test_network_moved_in_one_copy_has_the_same_weights_aligned_and_trains_the_same():
    from utils.engine import (
        FLAT_ALIGNMENT,
        Schedule,
        TensorSource,
        build_seeded_network,
        move_in_one_copy,
        train_models,
    )
    from utils.seeding import make_generator

    for name in ("ConvNet", "ConvNetBN"):
        plain = build_seeded_network(name, 1, 4, (8, 8), 3)
        flat = move_in_one_copy(build_seeded_network(name, 1, 4, (8, 8), 3), torch.device("cpu"), pin=False)
        for (key, a), (_, b) in zip(plain.state_dict().items(), flat.state_dict().items()):
            assert torch.equal(a, b) and a.dtype == b.dtype, key
            assert b.storage_offset() % FLAT_ALIGNMENT == 0, key
        source = TensorSource(torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
                              torch.arange(12) % 4, 4)
        schedule = Schedule(epochs=2, batch_size=5, lr=0.1)
        train_models([plain], source, schedule, [make_generator(1)])
        train_models([flat], source, schedule, [make_generator(1)])
        assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), flat.state_dict().values()))


# ------------------------------------------------------------------------------------------------ whole runs
class _DeviceReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts what would make a GPU's host wait: a value read back (item/float/int/bool) or an op whose output
    size depends on the data."""

    WAITS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.masked_select.default}

    def __init__(self, seen, counting):
        super().__init__()
        self.seen, self.counting = seen, counting

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.WAITS and self.counting():
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("script, argv", [
    ("main_DM.py", ["--ipc", "2"]),
    ("main.py", ["--method", "DSA", "--ipc", "2"]),
    ("main.py", ["--method", "DC", "--ipc", "2", "--CLoM", "--CLoM_distance", "cos", "--models_pool", "ConvNet",
                 "--alphas", "10", "--CLoM_batch_size", "64"]),
])
def test_iterations_read_nothing_back_but_their_random_choices(tmp_path, monkeypatch, script, argv):
    """Inside an iteration nothing is read from the device except the random choices of DSA's ops
    (randint_on_host: on CUDA read without waiting for the device's queue); the loop reads at its cadence."""
    from methods import clom
    from methods.DC_DSA_DM import distill
    from methods.DC_DSA_DM import main as dc_cli
    from methods.DC_DSA_DM import main_DM as dm_cli
    from utils import augment, seeding
    from utils.cli import run_cli
    from utils.engine import build_seeded_network
    from utils.io import pool_checkpoint_path

    monkeypatch.chdir(tmp_path)
    pool = tmp_path / pool_checkpoint_path("Digits", "ConvNet", 0, 150)
    pool.parent.mkdir(parents=True)
    torch.save(build_seeded_network("ConvNet", 1, 10, (8, 8), seed=3).state_dict(), pool)
    reads, choices, inside = [], [], [False]
    real_tolist, real_iteration = torch.Tensor.tolist, distill.method_iteration

    def tolist(self):
        if inside[0]:
            reads.append("tolist")
        return real_tolist(self)

    def allowed(real):  # reads made on purpose: DSA's op choices, and CLoM's pool member (a CPU generator)
        def draw(*args):
            inside[0] = False
            try:
                choices.append(real.__name__)
                return real(*args)
            finally:
                inside[0] = True
        return draw

    def iteration(*args, **kwargs):
        inside[0] = True
        try:
            with _DeviceReads(reads, lambda: inside[0]):
                return real_iteration(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(augment, "randint_on_host", allowed(seeding.randint_on_host))
    monkeypatch.setattr(clom, "draw_pool_member", allowed(clom.draw_pool_member))
    monkeypatch.setattr(distill, "method_iteration", iteration)
    cli = dm_cli if script == "main_DM.py" else dc_cli
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli(cli.main, ["--dataset", "Digits", "--batch_real", "8", "--random_seed", "0", "--Iteration",
                                  "2", "--num_eval", "0", *argv]) == 0
    finally:
        torch.set_num_threads(threads)
    assert reads == [] and choices
