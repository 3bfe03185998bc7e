"""The hot paths on a CUDA device against references: skipped where no GPU is present (CI), run on a GPU box.

Tolerances: float64 on the GPU must equal the float64 CPU/loop reference up to summation order (rtol 1e-8).
float32 gradient matching is checked against the float64 reference by relative norm: < 1e-2 with TF32 off
(float32 on the CPU gives 8e-4 for ConvNet: the per-channel cosines of the images' gradient cancel),
< 5e-2 with cuDNN's default TF32 convolutions (measured on an H200: 2.4e-2 for the images' gradient, whose
per-channel cosines cancel; 1.3e-4 for the loss).
"""

from __future__ import annotations

import pytest
import torch

from methods.clom import ce_class_sum, class_sums, cos_class_sum
from methods.DC_DSA_DM.distribution_matching import distribution_matching_loss
from methods.DC_DSA_DM.gradient_matching import gradient_matching_loss
from methods.reference import clom_direct, distribution_matching_loss_loop, gradient_matching_loss_loop
from networks import build_network
from utils import augment, engine
from utils.augment import (
    DEFAULT_DSA_STRATEGY,
    dc_augment,
    draw_dsa_params,
    dsa_augment,
    gather_params,
    siamese_augment,
)
from utils.engine import Schedule, TensorSource, build_seeded_network, evaluate_models, train_models
from utils.seeding import make_generator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
C, N_REAL, IPC, SHAPE = 10, 16, 3, (3, 32, 32)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm())


def data(dtype, device, name="ConvNet", seed=0):
    torch.manual_seed(seed)
    model = build_network(name, SHAPE[0], C, SHAPE[1:]).to(device, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    real = torch.randn(C, N_REAL, *SHAPE, generator=gen, dtype=torch.float64).to(device, dtype)
    syn = torch.randn(C, IPC, *SHAPE, generator=gen, dtype=torch.float64).to(device, dtype)
    return model, real, syn


def loss_and_grad(loss_fn, syn):
    syn = syn.clone().requires_grad_()
    loss = loss_fn(syn)
    return loss.detach(), torch.autograd.grad(loss, syn)[0]


@pytest.mark.parametrize("dtype, tf32", [(torch.float64, False), (torch.float32, False), (torch.float32, True)])
@pytest.mark.parametrize("name", ["ConvNet", "ConvNetBN"])
def test_gradient_matching_on_cuda_equals_cpu_loop(name, dtype, tf32):
    ref_model, real, syn = data(torch.float64, "cpu", name)
    if "BN" in name:
        ref_model(real.flatten(0, 1))
        ref_model.eval()
    loss_ref, grad_ref = loss_and_grad(lambda s: gradient_matching_loss_loop(ref_model, real, s), syn)
    model = build_network(name, SHAPE[0], C, SHAPE[1:]).to(CUDA, dtype)
    model.load_state_dict(ref_model.state_dict())
    model.train("BN" not in name)
    real_gpu = real.to(CUDA, dtype)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
        loss, grad = loss_and_grad(lambda s: gradient_matching_loss(model, real_gpu, s), syn.to(CUDA, dtype))
    if dtype == torch.float64:
        torch.testing.assert_close(loss.cpu(), loss_ref, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(grad.cpu(), grad_ref, rtol=1e-8, atol=1e-10)
    else:
        tol = 5e-2 if tf32 else 1e-2
        assert rel(loss, loss_ref) < tol and rel(grad, grad_ref) < tol, (rel(loss, loss_ref), rel(grad, grad_ref))


def test_distribution_matching_on_cuda_equals_loop():
    model, real, syn = data(torch.float64, CUDA)
    model.requires_grad_(False)
    loss, grad = loss_and_grad(lambda s: distribution_matching_loss(model, real, s), syn)
    loss_ref, grad_ref = loss_and_grad(lambda s: distribution_matching_loss_loop(model, real, s), syn)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-8, atol=1e-10)


def test_dsa_on_cuda_equals_the_same_parameters_on_cpu():
    x = torch.rand(12, *SHAPE, dtype=torch.float64)
    for op in DEFAULT_DSA_STRATEGY.split("_"):
        g = make_generator(3, CUDA)
        groups = torch.arange(12, device=CUDA) % 4
        params = gather_params(draw_dsa_params(op, 4, x.shape, g, CUDA), groups)
        cpu_params = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in params.items()}
        apply = getattr(augment, f"apply_{op}")
        torch.testing.assert_close(apply(x.to(CUDA), params).cpu(), apply(x, cpu_params), atol=1e-6, rtol=0)


def test_siamese_and_dc_augment_run_on_cuda_and_share_transforms():
    real = torch.rand(C, 4, *SHAPE, device=CUDA)
    syn = real[:, :2].clone()
    out_real, out_syn = siamese_augment(real, syn, DEFAULT_DSA_STRATEGY, make_generator(0, CUDA))
    assert out_real.device == real.device
    torch.testing.assert_close(out_real[:, :2], out_syn, atol=1e-5, rtol=0)  # same image, same transform
    out = dc_augment(real.flatten(0, 1), "crop_scale_rotate", make_generator(0, CUDA))
    assert out.shape == real.flatten(0, 1).shape and torch.isfinite(out).all()
    assert torch.equal(dsa_augment(real[0], DEFAULT_DSA_STRATEGY, make_generator(5, CUDA)),
                       dsa_augment(real[0], DEFAULT_DSA_STRATEGY, make_generator(5, CUDA)))


def test_stacked_training_on_cuda_equals_one_by_one():
    # float64: stacked (vmapped) and one-by-one SGD may differ only by summation order
    gen = torch.Generator().manual_seed(0)
    source = TensorSource(torch.randn(64, *SHAPE, generator=gen, dtype=torch.float64).to(CUDA),
                          torch.randint(0, C, (64,), generator=gen).to(CUDA))
    schedule = Schedule(epochs=2, batch_size=16, lr=0.01, momentum=0.9, weight_decay=5e-4)
    runs = {}
    for stack in (True, False):
        models = [build_seeded_network("ConvNet", 3, C, SHAPE[1:], s, CUDA).double() for s in (1, 2, 3)]
        train_models(models, source, schedule, [make_generator(s, CUDA) for s in (1, 2, 3)], stack=stack)
        runs[stack] = models
    for a, b in zip(runs[True], runs[False]):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-9, msg=name)
    assert evaluate_models(runs[True], source, stack=True) == evaluate_models(runs[True], source, stack=False)


def test_clom_class_sums_on_cuda_equal_the_matrix_formula():
    gen = torch.Generator().manual_seed(0)
    real_labels, syn_labels = torch.randint(10, (300,), generator=gen), torch.arange(50) % 10
    syn_logits = torch.randn(50, 10, generator=gen, dtype=torch.float64)
    syn_features, real_features = (torch.randn(n, 9, generator=gen, dtype=torch.float64) for n in (50, 300))
    counts = torch.bincount(real_labels, minlength=10)
    on = {name: t.to(CUDA) for name, t in dict(real_labels=real_labels, syn_labels=syn_labels, counts=counts,
                                                syn_logits=syn_logits, syn_features=syn_features,
                                                real_features=real_features).items()}
    torch.testing.assert_close(ce_class_sum(on["syn_logits"], on["syn_labels"], on["counts"]).cpu(),
                               clom_direct("ce", syn_logits, syn_labels, real_labels), rtol=1e-8, atol=1e-10)
    sums = class_sums(torch.nn.functional.normalize(on["real_features"], dim=1), on["real_labels"], 10)
    torch.testing.assert_close(cos_class_sum(on["syn_features"], on["syn_labels"], sums, on["counts"]).cpu(),
                               clom_direct("cos", syn_features, syn_labels, real_labels, real_features),
                               rtol=1e-8, atol=1e-10)


def test_default_stacking_is_for_one_batch_sets_on_cuda():
    models = [build_seeded_network("ConvNet", 3, C, SHAPE[1:], s, CUDA) for s in (1, 2)]
    assert [ids for ids, _ in engine._groups(models, None, batches_per_epoch=1)] == [[0, 1]]
    assert [ids for ids, _ in engine._groups(models, None, batches_per_epoch=2)] == [[0], [1]]


# ---------------------------------------------------------------- fast paths on CUDA (utils/fast.py)
def _train_cuda(compiled: bool, stack: bool, augment=None, epochs: int = 6):
    gen = torch.Generator().manual_seed(0)
    source = TensorSource(torch.randn(100, *SHAPE, generator=gen).to(CUDA),
                          (torch.arange(100) % C).to(CUDA), C)
    schedule = Schedule(epochs=epochs, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4, milestones=(3,),
                        restart_optimizer=True, augment=augment)
    models = [build_seeded_network("ConvNet", 3, C, SHAPE[1:], s, CUDA) for s in (1, 2, 3)]
    train_models(models, source, schedule, [make_generator(s, CUDA) for s in (1, 2, 3)], stack=stack,
                 compiled=compiled)
    return models


@pytest.mark.parametrize("stack", [False, True])
def test_compiled_cuda_graph_step_equals_eager(stack):
    """The compiled step replayed as a CUDA graph vs torch.optim, float32 with TF32 off, relative norm of all
    weights together. One step: < 1e-5 (the same maths summed in another order; a near-zero bias alone can
    differ by 4e-4 relatively). Six steps: < 2e-2 — measured on an H200, a ConvNet step amplifies a 1e-6
    difference to ~1e-4 and six reach ~5e-4 to 1.5e-3, with or without the CUDA graph."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        flip = augment.dsa_augmenter("flip_crop", augment.DISTILLATION_DSA)
        for epochs, tolerance in ((1, 1e-5), (6, 2e-2)):
            eager = _train_cuda(False, stack, flip, epochs)
            compiled = _train_cuda(True, stack, flip, epochs)
            for a, b in zip(eager, compiled):
                flat_a = torch.cat([x.detach().flatten() for x in a.parameters()])
                flat_b = torch.cat([x.detach().flatten() for x in b.parameters()])
                assert rel(flat_b, flat_a) < tolerance, (epochs, rel(flat_b, flat_a))
    finally:
        torch.backends.cudnn.allow_tf32 = True
    from utils import fast

    assert fast.fast_path_available(), fast._BROKEN


def test_compiled_real_side_on_cuda_equals_eager():
    """DC's real side compiled (inductor's fused kernels) against eager, fp32 with TF32 off: the loss and the
    images' gradient (the part the distillation uses). Both sides compute the same float32 sums in another
    order: the loss agrees to rel 1e-4; the images' gradient goes through per-channel cosines whose terms
    cancel, so, as float32 against float64 above, rel 1e-2."""
    from methods.DC_DSA_DM.gradient_matching import MatchingExecution

    model = build_network("ConvNet", 3, C, SHAPE[1:]).to(CUDA)
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(C, N_REAL, *SHAPE, generator=gen).to(CUDA)
    start = torch.randn(C, IPC, *SHAPE, generator=gen).to(CUDA)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        results = []
        for compiled in (False, True):
            loss_fn = lambda syn, compiled=compiled: gradient_matching_loss(  # noqa: E731
                model, real, syn, execution=MatchingExecution(batched=True, compiled=compiled))
            results.append(loss_and_grad(loss_fn, start))
    finally:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    (eager_loss, eager_grad), (fast_loss, fast_grad) = results
    assert rel(fast_loss, eager_loss) < 1e-4 and rel(fast_grad, eager_grad) < 1e-2


def test_compiled_dm_loss_on_cuda_equals_eager():
    """Loss and image gradients of DM's compiled loss against eager, fp32 with TF32 off (relative norms). The
    fused kernels sum in another order: the loss, a sum of squared differences of class means, agrees to rel
    1e-4; the images' gradient (differences of nearly equal means, times the network's Jacobian) to rel 1e-2."""
    model = build_network("ConvNet", 3, C, SHAPE[1:]).to(CUDA).requires_grad_(False)
    gen = torch.Generator().manual_seed(5)
    real = torch.randn(C, N_REAL, *SHAPE, generator=gen).to(CUDA)
    start = torch.randn(C, IPC, *SHAPE, generator=gen).to(CUDA)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        results = []
        for compiled in (False, True):
            syn = start.clone().requires_grad_()
            loss = distribution_matching_loss(model, real, syn, compiled)
            loss.backward()
            results.append((loss.detach(), syn.grad))
    finally:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    (eager_loss, eager_grad), (fast_loss, fast_grad) = results
    assert rel(fast_loss, eager_loss) < 1e-4 and rel(fast_grad, eager_grad) < 1e-2


def test_bf16_autocast_distillation_step_runs_and_stays_close():
    """DM under bfloat16 autocast against fp32 (TF32 off): bfloat16 keeps 8 bits of mantissa (rel. rounding
    2^-9 = 2e-3 per operation), so over a few layers the loss agrees to rel 5e-2 and the images' gradient, which
    subtracts nearly equal class means, to rel 0.2; it must be finite and point the same way (cosine > 0.95)."""
    model = build_network("ConvNet", 3, C, SHAPE[1:]).to(CUDA)
    gen = torch.Generator().manual_seed(4)
    real = torch.randn(C, N_REAL, *SHAPE, generator=gen).to(CUDA)
    start = torch.randn(C, IPC, *SHAPE, generator=gen).to(CUDA)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref_loss, ref_grad = loss_and_grad(lambda syn: distribution_matching_loss(model, real, syn), start)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low_loss, low_grad = loss_and_grad(lambda syn: distribution_matching_loss(model, real, syn), start)
    finally:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    assert torch.isfinite(low_grad).all() and rel(low_loss.float(), ref_loss) < 5e-2
    cosine = torch.nn.functional.cosine_similarity(low_grad.double().flatten(), ref_grad.double().flatten(), dim=0)
    assert rel(low_grad.float(), ref_grad) < 0.2 and cosine > 0.95


# ---------------------------------------------------------------- the host does not wait for the card (test_host_sync)
def test_fresh_network_reaches_the_card_in_one_copy_with_the_cpu_weights():
    cpu = build_seeded_network("ConvNetBN", 3, C, SHAPE[1:], 7)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a waiting copy per parameter would raise here
    try:
        net = build_seeded_network("ConvNetBN", 3, C, SHAPE[1:], 7, CUDA)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for (key, a), b in zip(cpu.state_dict().items(), net.state_dict().values()):
        assert b.is_cuda and torch.equal(a, b.cpu()), key


def test_randint_on_host_is_the_plain_draw_and_does_not_wait_for_queued_work():
    from utils.seeding import randint_on_host

    plain, ours = make_generator(3, CUDA), make_generator(3, CUDA)
    expected = torch.randint(6, (10,), generator=plain, device=CUDA)
    big = torch.randn(8192, 8192, device=CUDA)
    torch.cuda.synchronize()
    for _ in range(10):  # ~tens of ms of queued work
        big = big @ big / 8192
    queued = torch.cuda.Event()
    queued.record()
    values, host = randint_on_host(6, 10, ours)
    assert not queued.query()  # read while the queue was still busy
    assert torch.equal(values, expected) and host == expected.tolist()
    assert torch.equal(torch.rand(5, generator=ours, device=CUDA), torch.rand(5, generator=plain, device=CUDA))


def test_graph_on_persistent_tensors_equals_the_compiled_step_without_a_graph(monkeypatch):
    """The compiled step replayed from our CUDA graph against the same compiled step called plainly, fp32 (TF32
    off): the same kernels, so equal up to the order cuDNN's backward may sum in (rel 1e-6), over epochs and a
    second network that takes the graph over."""
    from utils import fast

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        runs = {}
        for static in (True, False):
            monkeypatch.setattr(fast, "STATIC_STEP_DEVICES", {"cuda"} if static else set())
            runs[static] = [_train_cuda(True, stack) for stack in (False, True)]
    finally:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    for graphed, plain in zip(runs[True], runs[False]):
        for a, b in zip(graphed, plain):
            flat_a = torch.cat([x.detach().flatten() for x in a.parameters()])
            flat_b = torch.cat([x.detach().flatten() for x in b.parameters()])
            assert rel(flat_a, flat_b) < 1e-6
    assert fast.fast_path_available(), fast._BROKEN


def test_steady_state_training_steps_and_the_loss_check_do_not_synchronise():
    from methods.DC_DSA_DM.loss_guard import LossGuard

    source = TensorSource(torch.randn(100, *SHAPE, device=CUDA), torch.arange(100, device=CUDA) % C, C)
    schedule = Schedule(epochs=3, batch_size=256, lr=0.01, momentum=0.0, weight_decay=0.0)
    first = [build_seeded_network("ConvNet", 3, C, SHAPE[1:], 1, CUDA)]
    train_models(first, source, schedule, [make_generator(1, CUDA)], compiled=True)  # compiles and captures
    image = torch.randn(10, *SHAPE, device=CUDA, requires_grad=True)
    optimizer = torch.optim.SGD([image], lr=0.1, momentum=0.5)
    guard = LossGuard(image, optimizer)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fresh = [build_seeded_network("ConvNet", 3, C, SHAPE[1:], 2, CUDA)]
        train_models(fresh, source, schedule, [make_generator(2, CUDA)], compiled=True)  # graph replays only
        for it in range(3):
            guard.begin(it)
            loss = image.pow(2).sum()
            guard.record(loss.detach(), it)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.first_bad() is None and not torch.equal(first[0].classifier.weight, fresh[0].classifier.weight)


def test_crop_on_the_card_takes_the_gather_with_kornias_values_and_gradients():
    x = torch.randn(40, *SHAPE, device=CUDA, requires_grad=True)
    shift_h = torch.randint(-4, 5, (40,), device=CUDA)
    shift_w = torch.randint(-4, 5, (40,), device=CUDA)
    ours = augment._translate(x, shift_h, shift_w)
    moved = torch.stack([-shift_w, -shift_h], dim=1).float()
    theirs = augment.translate(x, moved, mode="nearest", padding_mode="zeros", align_corners=True)
    weights = torch.randn_like(ours)
    assert torch.equal(ours, theirs)
    assert torch.equal(torch.autograd.grad((ours * weights).sum(), x)[0],
                       torch.autograd.grad((theirs * weights).sum(), x)[0])
