"""CLoM reaches the synthetic images, exactly: one image step with CLoM, through the command line, equals the
same step without CLoM plus SGD's response to alpha * grad CLoM, computed independently.

For each method (DC and DSA at ipc 1: one outer step and no inner loop; DM: one iteration) three runs start
from the same real images (--init real, one seed): --Iteration 0 (the starting set x0), --Iteration 1 without
CLoM (x_plain) and --Iteration 1 with it (x_clom). Every draw of the method (network, real batches, DSA)
comes from the seed alone, so both runs take the same method gradient g, and SGD with momentum 0.5
(buffer = g at the first step) gives

    x_plain = x0 - lr * g          x_clom = x0 - lr * (g + alpha * grad CLoM(x0))
    =>  x_clom - x_plain = -lr * alpha * grad CLoM(x0)

The right-hand side is computed here without the suite's CLoM code: the pool model loaded from its file, all
real images of the training set (--CLoM_batch_size 0) and the paper's |B| x |S| matrix formula
(methods/reference.clom_direct) for ce and cos, alpha * CE(model(x), y) for ce_plain, in float64.

Tolerance: x_clom and x_plain are float32 images of magnitude ~1-3, so their difference carries a rounding
error of a few 1e-7 per pixel; the reference is float64. A step of max size ~0.1-1 is compared to within
1e-3 of its largest entry (ce's term is the smallest here and still ~100 times that bound). Dropping the term,
detaching it, ignoring or mis-scaling alpha (the test's alphas are 750 and 75, not 1) or giving CLoM another class's
labels changes the step by far more.
"""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train_original_models
from methods.DC_DSA_DM import main as dc_cli
from methods.DC_DSA_DM import main_DM as dm_cli
from methods.reference import clom_direct
from networks import build_network
from utils.cli import run_cli
from utils.data import load_dataset
from utils.io import pool_checkpoint_path

# Not 1 and not round, large enough for a step well above float32 rounding (ce and cos are ratios near a
# constant, so their gradients are ~100 times smaller than plain CE's).
ALPHAS = {"ce": 750.0, "cos": 750.0, "ce_plain": 75.0}
POOL_EPOCH = 2
COMMON = ["--dataset", "Digits", "--init", "real", "--num_eval", "0", "--batch_real", "16", "--random_seed", "4"]
METHODS = {  # name: (script, flags, lr_img)
    "DC": (dc_cli, ["--method", "DC", "--ipc", "1", "--lr_img", "0.1"], 0.1),
    "DSA": (dc_cli, ["--method", "DSA", "--ipc", "1", "--lr_img", "0.1"], 0.1),
    "DM": (dm_cli, ["--ipc", "2", "--lr_img", "1"], 1.0),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A Digits pool of one ConvNet (2 epochs), trained by the suite's own script, in the paper's layout."""
    root = tmp_path_factory.mktemp("clom_step")
    previous = Path.cwd()
    os.chdir(root)
    try:
        assert run_cli(train_original_models.main, ["--dataset", "Digits", "--model", "ConvNet", "--normalize_data",
                                                    "--num", "1", "--epochs", str(POOL_EPOCH), "--save_every", "1",
                                                    "--random_seed", "0"]) == 0
    finally:
        os.chdir(previous)
    return root


def distilled_set(cli, flags: list[str], folder: str) -> torch.Tensor:
    path = Path(cli.main([*COMMON, *flags, "--save_path", folder]))
    [[images, _labels]] = torch.load(path, weights_only=True)["data"]
    return images.double()


def clom_flags(distance: str) -> list[str]:
    return ["--CLoM", "--CLoM_distance", distance, "--models_pool", "ConvNet", "--alphas", str(ALPHAS[distance]),
            "--model_num", "1", "--epoch", str(POOL_EPOCH), "--CLoM_batch_size", "0"]


def reference_clom_gradient(distance: str, x0: torch.Tensor, ipc: int) -> torch.Tensor:
    """alpha * d CLoM / d x at x0, in float64, from the pool's file, all real images and the matrix formula."""
    model = build_network("ConvNet", 1, 10, (8, 8))
    model.load_state_dict(torch.load(pool_checkpoint_path("Digits", "ConvNet", 0, POOL_EPOCH), weights_only=True))
    model = model.double().eval().requires_grad_(False)
    train = load_dataset("Digits", normalize=True).train
    real, real_labels = train.images().double(), train.labels
    syn_labels = torch.arange(10).repeat_interleave(ipc)  # class-major
    x = x0.clone().requires_grad_(True)
    if distance == "ce_plain":
        loss = ALPHAS[distance] * F.cross_entropy(model(x), syn_labels)
    elif distance == "ce":
        loss = clom_direct("ce", model(x), syn_labels, real_labels, alpha=ALPHAS[distance])
    else:
        loss = clom_direct("cos", model.embed(x), syn_labels, real_labels, model.embed(real), alpha=ALPHAS[distance])
    (gradient,) = torch.autograd.grad(loss, x)
    return gradient


CASES = [("DC", "ce"), ("DC", "cos"), ("DC", "ce_plain"), ("DSA", "ce_plain"), ("DSA", "cos"), ("DM", "cos"),
         ("DM", "ce")]


@pytest.mark.parametrize("method, distance", CASES)
def test_clom_step_is_the_plain_step_plus_sgds_response_to_alpha_grad_clom(workdir, monkeypatch, method, distance):
    monkeypatch.chdir(workdir)
    cli, flags, lr = METHODS[method]
    x0 = distilled_set(cli, [*flags, "--Iteration", "0"], f"{method}_{distance}_start")
    plain = distilled_set(cli, [*flags, "--Iteration", "1"], f"{method}_{distance}_plain")
    with_clom = distilled_set(cli, [*flags, "--Iteration", "1", *clom_flags(distance)], f"{method}_{distance}_clom")
    assert not torch.equal(plain, x0), "the method itself moved the images"

    expected = -lr * reference_clom_gradient(distance, x0, ipc=len(x0) // 10)
    moved_by_clom = with_clom - plain
    scale = expected.abs().max()
    assert scale > 1e-2, f"the CLoM step is too small to test ({scale:.2e})"
    error = (moved_by_clom - expected).abs().max()
    assert error <= 1e-3 * scale, f"{method} + CLoM {distance}: step differs from -lr*alpha*grad by {error:.3e} " \
                                  f"(largest entry {scale:.3e})"
