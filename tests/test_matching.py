"""DC/DSA gradient matching and DM, batched over classes, against the paper's per-class loops.

Everything runs in float64, so batched and looped results may differ only by summation order:
tolerances are rtol 1e-8, atol 1e-10 (float32 would need about atol 1e-5 / rtol 1e-4).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from methods.DC_DSA_DM.distribution_matching import distribution_matching_loss
from methods.DC_DSA_DM.gradient_matching import (
    MatchingExecution,
    get_loops,
    gradient_matching_loss,
    match_distance,
    per_class_gradients,
)
from methods.reference import distribution_matching_loss_loop, gradient_matching_loss_loop
from networks import build_network
from utils.augment import DSAParams, siamese_augment
from utils.errors import UserError
from utils.seeding import make_generator

TOL = dict(rtol=1e-8, atol=1e-10)
C, N_REAL, IPC = 3, 5, 2
SHAPE = (1, 8, 8)


def model_and_data(name: str, seed: int = 0, train_bn: bool = False):
    torch.manual_seed(seed)
    model = build_network(name, SHAPE[0], C, SHAPE[1:]).double()
    gen = torch.Generator().manual_seed(seed + 1)
    real = torch.randn(C, N_REAL, *SHAPE, generator=gen, dtype=torch.float64)
    syn = torch.randn(C, IPC, *SHAPE, generator=gen, dtype=torch.float64)
    if "BN" in name and not train_bn:
        model(real.flatten(0, 1))  # give the running stats non-trivial values, then freeze them
        model.eval()
    return model, real, syn


def grad_wrt(loss_fn, syn):
    syn = syn.clone().requires_grad_()
    loss = loss_fn(syn)
    return loss.detach(), torch.autograd.grad(loss, syn)[0]


@pytest.mark.parametrize("name", ["ConvNetW32", "ConvNetBN", "MLP"])
def test_per_class_gradients_equal_autograd(name):
    model, real, _ = model_and_data(name)
    labels = torch.arange(C).view(-1, 1).expand(C, N_REAL)
    batched = per_class_gradients(model, real, labels, create_graph=False)
    names = [n for n, _ in model.named_parameters()]
    assert len(batched) == len(names)
    for c in range(C):
        ref = torch.autograd.grad(F.cross_entropy(model(real[c]), labels[c]), list(model.parameters()))
        for g, r in zip(batched, ref):
            torch.testing.assert_close(g[c], r, **TOL)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("metric", ["ours", "mse", "cos"])
@pytest.mark.parametrize("name", ["ConvNetW32", "ConvNetBN", "MLP"])
def test_gradient_matching_equals_loop_value_and_syn_gradient(name, metric, batched):
    """Both executions (class-batched for GPUs, one class at a time for CPUs) equal the paper's loop."""
    model, real, syn = model_and_data(name)
    how = MatchingExecution(batched)
    loss, grad = grad_wrt(lambda s: gradient_matching_loss(model, real, s, metric=metric, execution=how), syn)
    loss_ref, grad_ref = grad_wrt(lambda s: gradient_matching_loss_loop(model, real, s, metric=metric), syn)
    torch.testing.assert_close(loss, loss_ref, **TOL)
    torch.testing.assert_close(grad, grad_ref, **TOL)
    assert grad.abs().max() > 0


def test_labels_chunking_and_no_gradient_into_the_network():
    model, real, syn = model_and_data("ConvNetW32")
    syn.requires_grad_()
    base = gradient_matching_loss(model, real, syn)
    labels_real = torch.arange(C).view(-1, 1).expand(C, N_REAL)
    labels_syn = torch.arange(C).view(-1, 1).expand(C, IPC)
    explicit = gradient_matching_loss(model, real, syn, labels_real, labels_syn, chunk_size=2)
    torch.testing.assert_close(base, explicit, **TOL)
    other = gradient_matching_loss(model, real, syn, labels_real.flip(0), labels_syn.flip(0))
    assert not torch.allclose(base, other)
    base.backward()
    assert syn.grad is not None and all(p.grad is None for p in model.parameters())
    syn.grad = None
    looped = gradient_matching_loss(model, real, syn, execution=MatchingExecution(batched=False))
    looped.backward()  # the per-class execution sends no gradient into the network either
    assert syn.grad is not None and all(p.grad is None for p in model.parameters())


def test_match_distance_ours_ignores_1d_tensors_and_rejects_unknown_metric():
    gs = [torch.randn(C, 4), torch.randn(C, 2, 3, 3, 3)]
    gr = [torch.randn(C, 4), gs[1].clone()]
    # identical weight gradients: each output unit adds 1 - |g|^2/(|g|^2 + eps) ~ 0; biases are ignored
    torch.testing.assert_close(match_distance(gs, gr, "ours"), torch.zeros(C), atol=1e-5, rtol=0)
    opposite = match_distance(gs, [gr[0], -gr[1]], "ours")
    torch.testing.assert_close(opposite, torch.full((C,), 4.0), atol=1e-5, rtol=0)  # 2 outputs x (1 - (-1))
    with pytest.raises(UserError, match="ours|mse|cos"):
        match_distance(gs, gr, "itgan")
    model, real, syn = model_and_data("MLP")
    with pytest.raises(UserError, match="ours|mse|cos"):
        gradient_matching_loss(model, real, syn, metric="L2")


def test_training_mode_batchnorm_is_refused():
    model, real, syn = model_and_data("ConvNetBN", train_bn=True)
    with pytest.raises(ValueError, match="eval mode"):
        gradient_matching_loss(model, real, syn)


@pytest.mark.parametrize("name", ["ConvNetW32", "MLP"])
def test_distribution_matching_equals_loop(name):
    model, real, syn = model_and_data(name)
    for p in model.parameters():
        p.requires_grad_(False)
    loss_ref, grad_ref = grad_wrt(lambda s: distribution_matching_loss_loop(model, real, s), syn)
    for batched in (True, False):  # all classes in one call (CUDA) and one class at a time (CPU)
        loss, grad = grad_wrt(lambda s, b=batched: distribution_matching_loss(model, real, s, batched=b), syn)
        torch.testing.assert_close(loss, loss_ref, **TOL)
        torch.testing.assert_close(grad, grad_ref, **TOL)


def test_distribution_matching_batchnorm_is_the_papers_all_class_batch():
    model, real, syn = model_and_data("ConvNetBN", train_bn=True)
    for p in model.parameters():
        p.requires_grad_(False)
    ref = model.embed(real.flatten(0, 1)).view(C, N_REAL, -1).mean(1) - model.embed(syn.flatten(0, 1)).view(
        C, IPC, -1).mean(1)
    torch.testing.assert_close(distribution_matching_loss(model, real, syn), ref.pow(2).sum(), **TOL)
    # per class would change what BatchNorm normalizes with: BN networks stay batched
    torch.testing.assert_close(distribution_matching_loss(model, real, syn, batched=False), ref.pow(2).sum(), **TOL)


@pytest.mark.parametrize("aug_mode", ["S", "M"])
def test_siamese_augment_same_transform_within_a_class(aug_mode):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(1, 1, 3, 12, 12, generator=gen).expand(C, 1, 3, 12, 12)  # one image, every slot
    real, syn = base.expand(C, N_REAL, 3, 12, 12).clone(), base.expand(C, IPC, 3, 12, 12).clone()
    params = DSAParams(aug_mode=aug_mode)
    strategy = "color_crop_cutout_flip_scale_rotate" if aug_mode == "M" else "scale_rotate"
    out_real, out_syn = siamese_augment(real, syn, strategy, make_generator(0), params=params)
    assert out_real.shape == real.shape and out_syn.shape == syn.shape
    for c in range(C):
        reference = out_real[c, 0]
        torch.testing.assert_close(out_real[c], reference.expand_as(out_real[c]), rtol=0, atol=0)
        torch.testing.assert_close(out_syn[c], reference.expand_as(out_syn[c]), rtol=0, atol=0)
    assert not torch.allclose(out_real[0, 0], out_real[1, 0])  # classes draw their own transforms
    same_real, same_syn = siamese_augment(real, syn, "none", make_generator(0))
    assert torch.equal(same_real, real) and torch.equal(same_syn, syn)


def test_siamese_augment_is_differentiable_wrt_syn():
    real = torch.randn(C, N_REAL, 1, 8, 8)
    syn = torch.randn(C, IPC, 1, 8, 8, requires_grad=True)
    _, out_syn = siamese_augment(real, syn, "crop_scale_rotate", make_generator(1), DSAParams(aug_mode="M"))
    out_syn.sum().backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


# The paper's (outer_loop, inner_loop) table (get_loops in its methods/DC_DSA_DM/utils.py), written out here,
# not read from the code under test.
PAPER_LOOPS = [(1, 1, 1), (10, 10, 50), (20, 20, 25), (30, 30, 20), (40, 40, 15), (50, 50, 10)]


@pytest.mark.parametrize("ipc, outer, inner", PAPER_LOOPS)
def test_get_loops_gives_the_papers_table(ipc, outer, inner):
    assert get_loops(ipc) == (outer, inner)


def test_get_loops_between_and_beyond_the_table():
    # min(ipc, 50) outer steps; inner interpolated linearly between the neighbouring rows, rounded half up
    assert get_loops(2) == (2, 6)  # 1 + (50 - 1) * 1/9 = 6.44
    assert get_loops(5) == (5, 23)  # 1 + 49 * 4/9 = 22.8
    assert get_loops(15) == (15, 38)  # 50 + (25 - 50) * 5/10 = 37.5
    assert get_loops(45) == (45, 13)  # 15 + (10 - 15) * 5/10 = 12.5
    assert get_loops(100) == (50, 10)
    for ipc in range(1, 120):
        outer, inner = get_loops(ipc)
        assert 1 <= outer <= 50 and 1 <= inner <= 50
    with pytest.raises(UserError):
        get_loops(0)
