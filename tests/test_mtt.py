"""MTT (methods/MTT): the trajectory-matching gradient against the unrolled reference, its memory, the student's
draws, and the two scripts on Digits (2 experts x 2 epochs, 2 iterations).

Exactness. match_trajectory and methods/reference.unrolled_trajectory_loss compute the same function; ours
walks the steps backwards with one rebuilt graph at a time, the reference back-propagates through one graph of
all steps. In float64 they may differ only by summation order: rtol 1e-9 and atol 1e-12 (measured: about 1e-16
relative). Dropping the Hessian term (adjoint = a instead of a - lr H a), the learning rate's sign or a step's
augmentation each changes the image gradient by more than 1e-3 of its size.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch

import validate
from methods.MTT import buffer as buffer_cli
from methods.MTT import distill as distill_cli
from methods.MTT.experts import expert_seed
from methods.MTT.replay_buffer import buffer_file, load_experts
from methods.MTT.trajectory_matching import (
    MTT_DSA,
    FlatNetwork,
    StudentSteps,
    draw_student_steps,
    match_trajectory,
    student_batch,
)
from methods.reference import clom_direct, unrolled_trajectory_loss
from networks import build_network
from utils.augment import apply_dsa_op, dsa_augment
from utils.cli import run_cli
from utils.data import load_dataset
from utils.engine import build_seeded_network
from utils.results import read_record

TOL = dict(rtol=1e-9, atol=1e-12)
STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _problem(name: str, channels: int = 1, images: int = 6, classes: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = build_network(name, channels, classes, (8, 8)).double()
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    target = start + 0.05 * torch.randn_like(start)
    x = torch.randn(images, channels, 8, 8, dtype=torch.float64)
    y = torch.arange(classes).repeat_interleave(images // classes)
    return model, start, target, x, y, torch.tensor(0.05, dtype=torch.float64)


def _reference(model, start, target, x, y, lr, draws):
    x, lr = x.clone().requires_grad_(True), lr.clone().requires_grad_(True)
    batches = [(d.indices, lambda b, d=d: b if d.op is None else apply_dsa_op(d.op, b, d.params, MTT_DSA))
               for d in draws]
    loss = unrolled_trajectory_loss(model, start, target, x, y, lr, batches)
    return (loss.detach(), *torch.autograd.grad(loss, (x, lr)))


@pytest.mark.parametrize("name, channels, strategy, batch_syn",
                         [("ConvNetW32", 1, STRATEGY, 4), ("ConvNetW32", 3, "scale_rotate", 6),
                          ("ConvNetBN", 1, "crop", 3), ("MLP", 1, None, 4)])
def test_gradients_equal_the_unrolled_reference(name, channels, strategy, batch_syn):
    model, start, target, x, y, lr = _problem(name, channels)
    draws = draw_student_steps(len(x), 5, batch_syn, strategy, x.shape, torch.Generator().manual_seed(3))
    ours = match_trajectory(StudentSteps(FlatNetwork(model)), start, target, x, y, lr, draws)
    loss, grad_x, grad_lr = _reference(model, start, target, x, y, lr, draws)
    torch.testing.assert_close(ours.loss, loss, **TOL)
    torch.testing.assert_close(ours.images, grad_x, **TOL)
    torch.testing.assert_close(ours.syn_lr, grad_lr, **TOL)
    assert grad_x.abs().max() > 1e-6 and grad_lr.abs() > 1e-6  # the gradients are not trivially zero


def test_the_comparison_can_fail():
    # Drop the Hessian term of the adjoint: the image gradient moves far beyond the tolerance.
    model, start, target, x, y, lr = _problem("ConvNetW32")
    draws = draw_student_steps(len(x), 5, 6, STRATEGY, x.shape, torch.Generator().manual_seed(3))
    steps = StudentSteps(FlatNetwork(model))
    exact = steps.hvp
    steps.hvp = lambda p, b, t, a: (lambda g, h, v: (g, torch.zeros_like(h), v))(*exact(p, b, t, a))
    broken = match_trajectory(steps, start, target, x, y, lr, draws)
    _, grad_x, _ = _reference(model, start, target, x, y, lr, draws)
    assert (broken.images - grad_x).abs().max() > 1e-3 * grad_x.abs().max()


def test_compiled_student_steps_equal_eager():
    model, start, target, x, y, lr = _problem("ConvNetD1")
    draws = draw_student_steps(len(x), 2, 6, "flip", x.shape, torch.Generator().manual_seed(1))
    eager = match_trajectory(StudentSteps(FlatNetwork(model)), start, target, x, y, lr, draws)
    compiled_steps = StudentSteps(FlatNetwork(model), compiled=True)
    compiled = match_trajectory(compiled_steps, start, target, x, y, lr, draws)
    assert compiled_steps.compiled  # it did not fall back to eager
    torch.testing.assert_close(compiled.images, eager.images, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(compiled.syn_lr, eager.syn_lr, rtol=1e-9, atol=1e-12)


class _SavedTensorMeter:
    """Bytes of the tensors autograd graphs keep for their backward pass, alive at once (the peak)."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, tensor):
        holder = [tensor]
        self.live += tensor.nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder_ref := _Holder(holder), self._free, tensor.nbytes)
        return holder_ref

    def _free(self, nbytes):
        self.live -= nbytes

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda holder: holder.value[0])


class _Holder:
    def __init__(self, value):
        self.value = value


def _saved_peak(fn) -> int:
    meter = _SavedTensorMeter()
    with meter.hooks():
        fn()
    return meter.peak


@pytest.mark.parametrize("steps", [2, 8])
def test_activation_memory_does_not_grow_with_syn_steps(steps):
    model, start, target, x, y, lr = _problem("ConvNetW32")
    model.float()
    start, target, x, lr = start.float(), target.float(), x.float(), lr.float()

    def ours(n):
        draws = draw_student_steps(len(x), n, 6, STRATEGY, x.shape, torch.Generator().manual_seed(3))
        return lambda: match_trajectory(StudentSteps(FlatNetwork(model)), start, target, x, y, lr, draws)

    def reference(n):
        draws = draw_student_steps(len(x), n, 6, STRATEGY, x.shape, torch.Generator().manual_seed(3))
        return lambda: _reference(model, start, target, x, y, lr, draws)

    assert _saved_peak(ours(steps)) <= 1.02 * _saved_peak(ours(1))  # one rebuilt step at a time
    assert _saved_peak(reference(steps)) > 1.5 * _saved_peak(reference(1))  # the meter sees the unrolled graph grow


def test_student_draws_are_one_dsa_call_per_step():
    # Each step's batch is what utils.augment.dsa_augment gives for the same generator state (MTT's DiffAugment
    # call: one op for the batch, every image its own parameters), and the batches cover the set once per pass.
    x = torch.randn(10, 3, 8, 8)
    draws = draw_student_steps(10, 4, 5, STRATEGY, x.shape, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    for k, draw in enumerate(draws):
        if k % 2 == 0:
            order = torch.randperm(10, generator=replay)
        assert torch.equal(draw.indices, order[(k % 2) * 5: (k % 2) * 5 + 5])
        torch.testing.assert_close(student_batch(x, draw), dsa_augment(x[draw.indices], STRATEGY, replay))


# ---------------------------------------------------------------------------------------------- the scripts
@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _buffer(*extra, experts=2, seed=0) -> int:
    return run_cli(buffer_cli.main, ["--dataset", "Digits", "--model", "ConvNetW32", "--num_experts", str(experts),
                                     "--train_epochs", "2", "--save_interval", "1", "--random_seed", str(seed),
                                     "--buffer_path", "buffers", "--batch_train", "128", *extra])


DISTILL = ["--dataset", "Digits", "--model", "ConvNetW32", "--ipc", "2", "--syn_steps", "3", "--expert_epochs", "1",
           "--max_start_epoch", "2", "--Iteration", "2", "--num_eval", "0", "--buffer_path", "buffers",
           "--random_seed", "1", "--lr_img", "100"]


def _distill(*extra) -> int:
    return run_cli(distill_cli.main, [*DISTILL, *extra])


def test_buffer_writes_mtts_layout_and_each_expert_is_its_seed(workdir):
    assert _buffer() == 0
    folder = workdir / "buffers/Digits/ConvNetW32"
    for k in (0, 1):
        # MTT's distill.py reads a file with a plain torch.load: a list of experts, each train_epochs + 1 lists of
        # parameters in model.parameters() order.
        experts = torch.load(buffer_file(folder, k), weights_only=True)
        assert isinstance(experts, list) and len(experts) == 1 and len(experts[0]) == 3
        fresh = build_seeded_network("ConvNetW32", 1, 10, (8, 8), expert_seed(0, k))
        assert [tuple(t.shape) for t in experts[0][0]] == [tuple(p.shape) for p in fresh.parameters()]
        assert all(torch.equal(t, p.detach()) for t, p in zip(experts[0][0], fresh.parameters()))
        assert not torch.equal(experts[0][0][0], experts[0][2][0])  # training moved it
        info = json.loads(buffer_file(folder, k).with_suffix(".json").read_text())
        assert info["seed"] == 0 and info["experts"] == [k] and len(info["test_acc"][0]) == 2
    assert not (folder / ".in_progress").exists()
    # the same seed again would make the same experts: refused
    assert _buffer() == 2


def test_buffer_resumes_after_a_crash_to_the_same_experts(workdir, monkeypatch):
    assert _buffer("--buffer_path", "whole", experts=3) == 0
    calls = []
    original = buffer_cli.train_experts

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(buffer_cli, "train_experts", crash_on_second)
    assert _buffer("--save_interval", "2", experts=3) == 130  # expert 0 is kept, expert 1 was lost
    monkeypatch.setattr(buffer_cli, "train_experts", original)
    assert _buffer("--save_interval", "2", experts=3) == 2  # an unfinished run is not silently extended
    assert _buffer("--save_interval", "2", "--resume", experts=3) == 0
    resumed = [e for n in (0, 1) for e in load_experts(buffer_file(workdir / "buffers/Digits/ConvNetW32", n))]
    whole = [e for n in (0, 1, 2) for e in load_experts(buffer_file(workdir / "whole/Digits/ConvNetW32", n))]
    assert len(resumed) == len(whole) == 3
    for a, b in zip(resumed, whole):
        assert all(torch.equal(s, t) for epoch_a, epoch_b in zip(a, b) for s, t in zip(epoch_a, epoch_b))


def test_stacked_experts_equal_solo_experts(workdir):
    assert _buffer("--buffer_path", "solo") == 0
    assert _buffer("--experts_at_once", "2") == 0
    for k in (0, 1):
        solo = load_experts(buffer_file(workdir / "solo/Digits/ConvNetW32", k))[0]
        stacked = load_experts(buffer_file(workdir / "buffers/Digits/ConvNetW32", k))[0]
        for epoch_a, epoch_b in zip(solo, stacked):  # float summation order only (as tests/test_engine.py)
            assert all(torch.allclose(s, t, atol=1e-5, rtol=1e-4) for s, t in zip(epoch_a, epoch_b))


def test_distill_reads_a_buffer_in_mtts_own_format(workdir):
    # As MTT's buffer.py writes it: torch.save of a list of experts (no description beside it).
    folder = workdir / "buffers/Digits/ConvNetW32"
    folder.mkdir(parents=True)
    experts = []
    for seed in (5, 6):
        net = build_seeded_network("ConvNetW32", 1, 10, (8, 8), seed)
        experts.append([[p.detach().clone() + 0.01 * e for p in net.parameters()] for e in range(3)])
    torch.save(experts, folder / "replay_buffer_0.pt")
    assert _distill() == 0
    result = torch.load(workdir / "condensed/Digits/MTT/IPC2/original_method/res_MTT_Digits_ConvNetW32_2ipc.pt",
                        weights_only=True)
    assert result["data"][0][0].shape == (20, 1, 8, 8) and len(result["syn_lr"]) == 1


def test_missing_buffer_is_one_line_with_the_command(workdir, capsys):
    assert _distill() == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "python methods/MTT/buffer.py --dataset=Digits --model=ConvNetW32" in err


@pytest.mark.parametrize("extra, message", [
    (["--CLoM_experts", "2"], "--CLoM_experts needs --CLoM"),
    (["--max_start_epoch", "3"], "--max_start_epoch 3 and --expert_epochs 1 need epoch 3"),
    (["--CLoM", "--CLoM_experts", "2"], "--alphas"),
    (["--zca"], "trained without ZCA"),
])
def test_distill_bad_input_is_one_line(workdir, capsys, extra, message):
    assert _buffer() == 0
    assert _distill(*extra) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_distill_resumes_to_the_same_set(workdir):
    assert _buffer() == 0
    assert _distill("--save_path", "whole") == 0
    assert _distill("--save_path", "parts", "--stop_after", "0") == 0
    assert _distill("--save_path", "parts", "--resume") == 0
    name = "original_method/res_MTT_Digits_ConvNetW32_2ipc.pt"
    whole, parts = (torch.load(workdir / p / name, weights_only=True) for p in ("whole", "parts"))
    assert torch.equal(whole["data"][0][0], parts["data"][0][0]) and whole["syn_lr"] == parts["syn_lr"]


def test_clom_with_the_experts_as_pool_reaches_the_images(workdir):
    # One iteration with CLoM minus one without = -lr_img * alpha * grad CLoM(x0) (SGD's first momentum step),
    # CLoM computed here with the paper's |B| x |S| matrix formula on the experts' last weights, all real images.
    assert _buffer() == 0
    one = ["--Iteration", "1", "--lr_lr", "1e-12"]
    assert _distill(*one, "--save_path", "plain") == 0
    alpha = 750.0
    assert _distill(*one, "--save_path", "clom", "--CLoM", "--CLoM_distance", "cos", "--CLoM_experts", "2",
                    "--alphas", str(alpha), "--CLoM_batch_size", "0") == 0
    assert _distill("--Iteration", "0", "--save_path", "start") == 0
    load = lambda path: torch.load(next((workdir / path).rglob("res_*.pt")), weights_only=True)
    x0, plain, clom = (load(p)["data"][0][0].double() for p in ("start", "plain", "clom"))
    labels = load("start")["data"][0][1]
    data = load_dataset("Digits", normalize=True)
    grads = []
    for k in (0, 1):  # the step draws one of the two experts: the test accepts the one it drew
        model = build_network("ConvNetW32", 1, 10, (8, 8)).double().eval()
        last = load_experts(buffer_file(workdir / "buffers/Digits/ConvNetW32", k))[0][-1]
        with torch.no_grad():
            for p, q in zip(model.parameters(), last):
                p.copy_(q)
        x = x0.clone().requires_grad_(True)
        real = model.embed(data.train.images().double()).detach()
        loss = alpha * clom_direct("cos", model.embed(x), labels, data.train.labels, real)
        grads.append(torch.autograd.grad(loss, x)[0])
    step = clom - plain
    bound = 1e-3 * step.abs().max()
    assert step.abs().max() > 0
    assert min((step + 100 * g).abs().max() for g in grads) < bound  # lr_img 100
    assert (step + 10 * grads[0]).abs().max() > bound and (step + 10 * grads[1]).abs().max() > bound  # alpha counts


def test_validate_trains_with_the_learned_lr_and_zca(workdir):
    assert _buffer("--zca") == 0
    assert _distill("--zca", "--save_path", "zca") == 0
    result = next((workdir / "zca").rglob("res_*.pt"))
    saved = torch.load(result, weights_only=True)
    assert saved["zca"] == {"eps": 0.1} and saved["normalized"] is False
    common = ["--dataset", "Digits", "--model", "ConvNetW32", "--synthesis_data_path", str(result), "--epochs", "2",
              "--random_seed", "0"]
    assert run_cli(validate.main, [*common, "--result_json", "learned.json"]) == 0
    assert run_cli(validate.main, [*common, "--lr", "0.02", "--result_json", "flag.json"]) == 0
    learned, flag = (json.loads(Path(name).read_text()) for name in ("learned.json", "flag.json"))
    assert learned["lr"] == pytest.approx(saved["syn_lr"][0]) and learned["lr_source"] == "the set's learned lr"
    assert flag["lr"] == 0.02 and flag["lr_source"] == "--lr"
    assert "ZCA-whitened" in (result.parent / "validate_ConvNetW32.log").read_text()
    # summarize.py: every set's own learned lr is one setting, so the seeds of a cell share a row
    assert read_record(Path("learned.json")).settings["validate.lr"] == "learned"
    assert read_record(Path("flag.json")).settings["validate.lr"] == 0.02
