"""Fast paths against the eager path: the compiled SGD step (utils/fast.py), the per-device choices.

The compiled step is traced with the "aot_eager" backend here (dynamo + AOTAutograd, the same graph inductor
compiles, without generating kernels: seconds instead of minutes on 2 CPU cores), and once with inductor itself
on a tiny network. Tolerances: the functional step computes SGD exactly as torch.optim does, but the traced
backward may sum in another order: weights agree to atol 1e-6 after a few float32 steps.
"""

from __future__ import annotations

import pytest
import torch

from methods.DC_DSA_DM.distribution_matching import distribution_matching_loss
from methods.DC_DSA_DM.gradient_matching import MatchingExecution, execution_for, gradient_matching_loss
from utils import fast
from utils.engine import EpochHook, Schedule, TensorSource, build_seeded_network, train_models
from utils.runtime import (
    CPU_COMPILE_MIN_ITERATIONS,
    CPU_COMPILE_MIN_TRAINING_STEPS,
    Runtime,
    fast_paths_note,
    make_runtime,
    training_steps,
)
from utils.seeding import make_generator


def toy_source(n=24, classes=4):
    g = make_generator(0)
    images = torch.randn(n, 1, 8, 8, generator=g)
    labels = torch.arange(n) % classes
    return TensorSource(images + labels.view(-1, 1, 1, 1).float(), labels, classes)


def train(compiled: bool, name="ConvNetW32", seeds=(1, 2, 3), stack=None, augment=None):
    models = [build_seeded_network(name, 1, 4, (8, 8), s) for s in seeds]
    schedule = Schedule(epochs=4, batch_size=12, lr=0.05, momentum=0.9, weight_decay=5e-3, milestones=(2,),
                        restart_optimizer=True, augment=augment)
    seen = []
    hook = EpochHook(lambda epoch, ids, trained: seen.append([m.classifier.weight.sum().item() for m in trained]), 2)
    train_models(models, toy_source(), schedule, [make_generator(s) for s in seeds], hook=hook, stack=stack,
                 compiled=compiled)
    return models, seen


@pytest.fixture
def traced_only(monkeypatch):
    monkeypatch.setattr(fast, "compile_options", lambda device, **requested: {"backend": "aot_eager"})
    monkeypatch.setattr(fast, "_COMPILED", {})
    monkeypatch.setattr(fast, "_BROKEN", [])


@pytest.mark.parametrize("stack", [False, True])
def test_compiled_step_trains_like_the_eager_step(traced_only, stack):
    flip = lambda x, g: torch.where(torch.rand(len(x), 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)
    eager, eager_seen = train(False, stack=stack, augment=flip)
    compiled, compiled_seen = train(True, stack=stack, augment=flip)
    assert not fast._BROKEN
    for a, b in zip(eager, compiled):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(torch.tensor(eager_seen), torch.tensor(compiled_seen), atol=1e-5, rtol=1e-5)
    assert len(fast._COMPILED) == 1  # three models (or one stack of three): one compiled function


@pytest.fixture
def static_step(traced_only, monkeypatch):
    """The CUDA path's bookkeeping on the CPU: the step updates persistent tensors in place, shared by every
    trainer of the architecture (on CUDA the same calls are captured once as a graph and replayed)."""
    monkeypatch.setattr(fast, "STATIC_STEP_DEVICES", {"cpu"})
    monkeypatch.setattr(fast, "_STATIC", {})


@pytest.mark.parametrize("stack", [False, True])
def test_step_on_persistent_tensors_equals_the_plain_compiled_step(traced_only, monkeypatch, stack):
    plain, plain_seen = train(True, stack=stack)
    monkeypatch.setattr(fast, "STATIC_STEP_DEVICES", {"cpu"})
    monkeypatch.setattr(fast, "_STATIC", {})
    static, static_seen = train(True, stack=stack)
    assert len(fast._STATIC) == 1 and not fast._BROKEN
    assert plain_seen == static_seen
    for a, b in zip(plain, static):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_trainers_taking_turns_on_the_persistent_tensors_train_as_alone(static_step):
    """Two trainers of one architecture alternate steps (each takes the tensors over from the other): each ends
    where it ends when trained alone, momentum and a restarted optimizer included."""
    source = toy_source()
    x, y = source.images()[None, :12], source.labels[None, :12]
    schedule = Schedule(epochs=1, batch_size=12, lr=0.05, momentum=0.9, weight_decay=5e-3)

    def trainer(seed):
        model = build_seeded_network("ConvNetW32", 1, 4, (8, 8), seed)
        return model, fast.CompiledTrainer([model], schedule, None)

    def run(trainer_, step):
        if step == 2:
            trainer_.set_lr(0.01, restart=True)
        trainer_.step(x, y)

    alone = []
    for seed in (1, 2):
        model, t = trainer(seed)
        for step in range(4):
            run(t, step)
        t.write_back()
        alone.append(model)
    (model_a, a), (model_b, b) = trainer(1), trainer(2)
    for step in range(4):
        run(a, step)
        run(b, step)
    a.write_back()
    b.write_back()
    assert len(fast._STATIC) == 1
    for together, by_itself in zip((model_a, model_b), alone):
        assert all(torch.equal(p, q) for p, q in zip(together.parameters(), by_itself.parameters()))


def test_batchnorm_models_and_failures_fall_back_to_the_eager_step(traced_only, monkeypatch):
    eager, _ = train(False, name="ConvNetBN", seeds=(1,))
    compiled, _ = train(True, name="ConvNetBN", seeds=(1,))
    assert not fast._COMPILED  # BatchNorm: never compiled
    assert all(torch.equal(a, b) for a, b in zip(eager[0].state_dict().values(), compiled[0].state_dict().values()))

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fast, "_compiled_step", lambda *args: broken)
    reference, _ = train(False, seeds=(4,))
    fallback, _ = train(True, seeds=(4,))
    assert fast._BROKEN and not fast.fast_path_available()
    assert all(torch.equal(a, b) for a, b in zip(reference[0].parameters(), fallback[0].parameters()))


def test_inductor_compiles_the_step_on_this_cpu(monkeypatch):
    """The real compiler once, on the smallest network (an MLP): same weights as eager to atol 1e-5."""
    monkeypatch.setattr(fast, "_COMPILED", {})
    monkeypatch.setattr(fast, "_BROKEN", [])
    eager, _ = train(False, name="MLP", seeds=(5,))
    compiled, _ = train(True, name="MLP", seeds=(5,))
    assert not fast._BROKEN, fast._BROKEN
    for pa, pb in zip(eager[0].parameters(), compiled[0].parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)


def test_compiled_real_side_equals_the_eager_one(traced_only):
    """The compiled real side (batched, and one class per call as on a CPU) gives the eager loss and images'
    gradient (atol 1e-5: the traced graph may sum in another order)."""
    torch.manual_seed(0)
    model = build_seeded_network("ConvNetW32", 1, 3, (8, 8), 0)
    real, start = torch.randn(3, 6, 1, 8, 8), torch.randn(3, 2, 1, 8, 8)
    results = []
    for execution in (MatchingExecution(batched=True), MatchingExecution(batched=True, compiled=True),
                      MatchingExecution(batched=False, compiled=True)):
        syn = start.clone().requires_grad_(True)
        loss = gradient_matching_loss(model, real, syn, execution=execution)
        results.append((loss.detach(), torch.autograd.grad(loss, syn)[0]))
    assert not fast._BROKEN and any(key[0] == "real_side" for key in fast._COMPILED)
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[2], results[0], atol=1e-5, rtol=1e-5)


def test_fast_paths_and_precision_are_chosen_per_device():
    cpu = make_runtime(torch.device("cpu"))
    assert cpu.precision == "fp32" and not cpu.fast
    assert not execution_for(cpu, 10).batched and not execution_for(cpu, 10).compiled
    cuda = Runtime(torch.device("cuda"), fast=True, precision="tf32")  # no GPU needed to decide
    assert execution_for(cuda, 10).batched and execution_for(cuda, 10).compiled
    assert not make_runtime(torch.device("cpu"), eager=True).fast
    with pytest.raises(ValueError):
        make_runtime(torch.device("cpu"), precision="fp8")
    assert Runtime(torch.device("cpu"), precision="bf16").autocast() is not None


def test_compiled_dm_loss_equals_the_eager_one_across_fresh_networks(monkeypatch):
    """DM's compiled loss (traced with aot_eager) gives the eager loss and image gradients (atol 1e-5) for each
    iteration's fresh network, from one compiled function; BatchNorm networks stay eager."""
    monkeypatch.setattr(fast, "_COMPILED", {})
    monkeypatch.setattr(fast, "_BROKEN", [])
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile_(fn, backend="aot_eager", dynamic=False))
    real = torch.randn(3, 6, 1, 8, 8, generator=make_generator(0))
    for seed in (0, 1):
        model = build_seeded_network("ConvNetW32", 1, 3, (8, 8), seed).requires_grad_(False)
        results = []
        # eager, compiled on all classes at once (CUDA), compiled one class per call (CPU)
        for compiled, batched in ((False, True), (True, True), (True, False)):
            syn = torch.randn(3, 2, 1, 8, 8, generator=make_generator(1), requires_grad=True)
            loss = distribution_matching_loss(model, real, syn, compiled, batched)
            loss.backward()
            results.append((loss.detach(), syn.grad))
        assert not fast._BROKEN, fast._BROKEN
        torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(results[2], results[0], atol=1e-5, rtol=1e-5)
    assert [key[0] for key in fast._COMPILED] == ["dm_loss"]  # one function for every network
    bn_model = build_seeded_network("ConvNetBN", 1, 3, (8, 8), 0).requires_grad_(False)
    distribution_matching_loss(bn_model, real, torch.randn(3, 2, 1, 8, 8), compiled=True)
    assert len(fast._COMPILED) == 1


def test_a_cpu_compiles_only_runs_that_repay_it():
    cpu, long = make_runtime(torch.device("cpu")), CPU_COMPILE_MIN_ITERATIONS
    assert not cpu.compiles(long - 1) and cpu.compiles(long)
    assert not execution_for(cpu, long - 1).compiled and execution_for(cpu, long).compiled
    assert not execution_for(cpu, long).batched  # still one class at a time
    assert not make_runtime(torch.device("cpu"), eager=True).compiles(20000)
    assert Runtime(torch.device("cuda"), fast=True).compiles(1)
    assert not Runtime(torch.device("cuda"), eager=True).compiles(20000)


def test_a_cpu_compiles_only_trainings_that_repay_it():
    cpu, many = make_runtime(torch.device("cpu")), CPU_COMPILE_MIN_TRAINING_STEPS
    assert training_steps(networks=20, epochs=300, images=100, batch_size=256) == 6000
    assert training_steps(networks=2, epochs=150, images=1198, batch_size=256) == 1500  # Digits pool: 5 batches
    assert not cpu.compiles_training(many - 1) and cpu.compiles_training(many)
    assert not make_runtime(torch.device("cpu"), eager=True).compiles_training(10 ** 6)
    assert Runtime(torch.device("cuda"), fast=True).compiles_training(1)
    assert fast_paths_note(cpu, steps=many).startswith("compiled on the CPU")
    assert fast_paths_note(cpu, steps=10).startswith("off on the CPU")
    assert fast_paths_note(cpu, iterations=CPU_COMPILE_MIN_ITERATIONS).startswith("compiled on the CPU")
    assert fast_paths_note(make_runtime(torch.device("cpu"), eager=True), iterations=20000) == "off"
    assert fast_paths_note(Runtime(torch.device("cuda"), fast=True), steps=1) == "on"


def test_bf16_training_inside_one_autocast_region_learns_like_fp32():
    """The scripts enter Runtime.autocast() once per run: SGD steps inside it must see the updated weights
    (with autocast's weight cache the forward kept the first bfloat16 copies and the loss stayed at ln 10)."""
    y = torch.arange(10).repeat_interleave(10)
    source = TensorSource(torch.randn(100, 1, 8, 8, generator=make_generator(0)) + 0.3 * y.view(-1, 1, 1, 1), y, 10)
    schedule = Schedule(epochs=30, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses = {}
    for precision in ("fp32", "bf16"):
        model = build_seeded_network("ConvNetW32", 1, 10, (8, 8), 0)
        with Runtime(torch.device("cpu"), precision=precision).autocast():
            train_models([model], source, schedule, [make_generator(1)])
        with torch.no_grad():
            losses[precision] = float(torch.nn.functional.cross_entropy(model(source.images()), y))
    assert losses["fp32"] < 2.0 and abs(losses["bf16"] - losses["fp32"]) < 0.2, losses


def test_inductor_compiles_the_per_class_dm_loss_on_this_cpu(monkeypatch):
    """What a long DM run on a CPU compiles: one compiled call per class, through inductor itself (one small
    network, ~20 s on 2 cores). Loss and image gradients equal the eager loop's to atol 1e-5."""
    monkeypatch.setattr(fast, "_COMPILED", {})
    monkeypatch.setattr(fast, "_BROKEN", [])
    model = build_seeded_network("ConvNetD1", 1, 3, (8, 8), 0).requires_grad_(False)
    real = torch.randn(3, 6, 1, 8, 8, generator=make_generator(0))
    results = []
    for compiled in (False, True):
        syn = torch.randn(3, 2, 1, 8, 8, generator=make_generator(1), requires_grad=True)
        loss = distribution_matching_loss(model, real, syn, compiled, batched=False)
        loss.backward()
        results.append((loss.detach(), syn.grad))
    assert not fast._BROKEN, fast._BROKEN
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=1e-5)


@pytest.fixture
def compiles_traced(monkeypatch):
    """torch.compile through aot_eager (no kernel generation: seconds), every compiled function recorded."""
    monkeypatch.setattr(fast, "_COMPILED", {})
    monkeypatch.setattr(fast, "_BROKEN", [])
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile_(fn, backend="aot_eager", dynamic=False))


@pytest.mark.parametrize("iterations", [CPU_COMPILE_MIN_ITERATIONS - 1, CPU_COMPILE_MIN_ITERATIONS])
def test_distillations_compile_on_the_cpu_exactly_where_the_rule_says(compiles_traced, tmp_path, iterations):
    """Iteration 0 of a DM and a DC run (stopped there): a run of CPU_COMPILE_MIN_ITERATIONS compiles DM's loss,
    DC's real side and the inner loop's SGD step; one iteration shorter compiles nothing."""
    from methods.DC_DSA_DM import main as dc_cli
    from methods.DC_DSA_DM import main_DM as dm_cli

    common = ["--dataset", "Digits", "--ipc", "2", "--batch_real", "8", "--num_eval", "0", "--random_seed", "0",
              "--Iteration", str(iterations), "--stop_after", "0"]
    dm_cli.main([*common, "--save_path", str(tmp_path / "dm")])
    dc_cli.main([*common, "--method", "DC", "--save_path", str(tmp_path / "dc")])  # ipc 2: one inner loop
    assert not fast._BROKEN, fast._BROKEN
    compiled = {key[0] for key in fast._COMPILED}
    assert compiled == ({"dm_loss", "real_side", "sgd_step"} if iterations >= CPU_COMPILE_MIN_ITERATIONS else set())


class _Stop(Exception):
    pass


@pytest.mark.parametrize("epochs", [999, 1000])
def test_validate_compiles_its_training_on_the_cpu_exactly_where_the_rule_says(monkeypatch, tmp_path, epochs):
    """validate.py on a one-batch set with 2 networks: 2 x 1000 epochs = CPU_COMPILE_MIN_TRAINING_STEPS steps ask
    train_models for the compiled step (which test_compiled_step_trains_like_the_eager_step shows compiling);
    2 x 999 do not."""
    import validate
    from utils import engine

    asked = []

    def record(models, source, schedule, generators, **options):
        asked.append(options.get("compiled"))
        raise _Stop

    monkeypatch.setattr(engine, "train_models", record)
    path = tmp_path / "set.pt"
    torch.save({"data": [[torch.randn(20, 1, 8, 8), torch.arange(10).repeat_interleave(2)]]}, path)
    assert training_steps(2, 1000, 20, 256) == CPU_COMPILE_MIN_TRAINING_STEPS
    with pytest.raises(_Stop):
        validate.main(["--dataset", "Digits", "--synthesis_data_path", str(path), "--num_eval", "2", "--epochs",
                       str(epochs), "--gpu", "cpu", "--result_json", str(tmp_path / "out.json")])
    assert asked == [epochs == 1000]
