"""The whole MTT step (Cazenavette et al., "Dataset Distillation by Matching Training Trajectories"), exact and
in memory that does not grow with the number of student steps.

A student starts at an expert's parameters p_0 (epoch e) and takes N = syn_steps SGD steps on the synthetic set:

    p_{k+1} = p_k - lr * g_k,    g_k = grad_p CE(f(p_k, aug_k(X[idx_k])), y[idx_k])

and the loss compares where it lands with where the expert was expert_epochs later (p_T):

    L = |p_N - p_T|^2 / |p_0 - p_T|^2.

MTT's code keeps all N steps' graphs (create_graph=True) and back-propagates through them at once, so its
activation memory grows with N. Here the forward pass keeps only the parameters p_0 .. p_N (N + 1 flat vectors,
a few MB) and the random draws of every step; the backward pass then walks the steps in reverse with the
adjoint a_k = dL/dp_k, starting from a_N = 2 (p_N - p_T) / |p_0 - p_T|^2. Step k's graph is rebuilt from p_k and
X (the same draws), and one vector-Jacobian product of g_k with a_{k+1} gives everything at once:

    dL/dlr += -a_{k+1} . g_k
    dL/dX  += -lr * (dg_k/dX)^T a_{k+1}
    a_k     =  a_{k+1} - lr * (dg_k/dp)^T a_{k+1}      (a Hessian-vector product)

This is reverse-mode differentiation of the same unrolled computation, so the gradients equal those of the
unrolled graph (methods/reference.py; tests/test_mtt.py), up to float rounding. Only one step's graph is alive at
a time: memory is flat in N, at the price of one extra forward and backward pass per step (the forward pass of
the rebuild).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from utils.augment import DSA_OPS, DSAParams, Params, apply_dsa_op, draw_dsa_params, parse_strategy
from utils.errors import one_line
from utils.log import get_logger

MTT_DSA = DSAParams()  # MTT's DiffAugment: the DSA code's defaults, scale and rotate with align_corners=True


class FlatNetwork:
    """`net(flat, x)`: a network evaluated at a flat parameter vector, laid out as MTT's expert trajectories
    store it (the parameters in `model.parameters()` order, each flattened). Buffers stay the module's own."""

    def __init__(self, model: nn.Module):
        self.model = model
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        return {name: part.view(shape)
                for name, part, shape in zip(self.names, flat.split(self.numels), self.shapes)}

    def flatten(self, tensors: Sequence[Tensor], device=None, dtype=None) -> Tensor:
        """An expert's parameter list (one epoch of a trajectory) -> one flat vector."""
        if len(tensors) != len(self.shapes) or any(tuple(t.shape) != s for t, s in zip(tensors, self.shapes)):
            got = [tuple(t.shape) for t in tensors]
            raise ValueError(f"the expert's parameters {got} do not fit the network's {self.shapes}")
        return torch.cat([t.reshape(-1).to(device=device, dtype=dtype) for t in tensors])

    def __call__(self, flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.model, self.unflatten(flat), (x,))


@dataclass(frozen=True)
class StudentDraw:
    """The random part of one student step, drawn once in the forward pass and replayed in the backward
    pass: which synthetic images form the batch, and its DSA op and per-image parameters (none: no DSA)."""

    indices: Tensor
    op: str | None = None
    params: Params | None = None


def draw_student_steps(num_images: int, steps: int, batch_syn: int, strategy: str | None, im_shape: Sequence[int],
                       generator: torch.Generator, dsa: DSAParams = MTT_DSA) -> list[StudentDraw]:
    """MTT's batches: consecutive chunks of batch_syn of a fresh random permutation of the synthetic set (a new
    permutation when one is used up), each augmented as one DiffAugment call: ONE op for the batch, every image
    its own parameters (the same draws as utils.augment.dsa_augment with this generator)."""
    ops = parse_strategy(strategy, tuple(DSA_OPS), "DSA")
    device = generator.device
    draws: list[StudentDraw] = []
    chunks: list[Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(num_images, generator=generator, device=device).split(batch_syn))
        indices = chunks.pop(0)
        if not ops:
            draws.append(StudentDraw(indices))
            continue
        op = ops[int(torch.randint(len(ops), (1,), generator=generator, device=device).item())]
        params = draw_dsa_params(op, len(indices), (len(indices), *im_shape[-3:]), generator, device, dsa)
        draws.append(StudentDraw(indices, op, params))
    return draws


def student_batch(images: Tensor, draw: StudentDraw, dsa: DSAParams = MTT_DSA) -> Tensor:
    """The (augmented) synthetic batch of one student step."""
    x = images.index_select(0, draw.indices)
    return x if draw.op is None else apply_dsa_op(draw.op, x, draw.params, dsa).contiguous()


class StudentSteps:
    """The two computations of a student step at parameters p on an (augmented) batch x:
    `gradient(p, x, y)` = g = grad_p CE, and `hvp(p, x, y, a)` = (g, (dg/dp)^T a, (dg/dx)^T a).

    Eager: plain autograd. Compiled (torch.compile of the torch.func form, one graph each): the norm layers'
    double backward is dozens of elementwise ops that inductor fuses; 1.7x faster per step on a CPU
    (ConvNet, 100 images of 32x32x3), equal to the eager result up to float rounding (tests/test_mtt.py)."""

    def __init__(self, net: FlatNetwork, compiled: bool = False):
        self.net, self.compiled = net, compiled
        self.gradient, self.hvp = self._eager_gradient, self._eager_hvp
        if compiled:
            self.gradient = self._first_call_falls_back(torch.compile(self._func_gradient, dynamic=False), "gradient")
            self.hvp = self._first_call_falls_back(torch.compile(self._func_hvp, dynamic=False), "hvp")

    def _first_call_falls_back(self, compiled_fn, name: str):
        """A compiler that cannot build the step on this machine fails on the first call: then run eagerly
        (same results up to rounding) and say so, rather than stop the run."""
        tried = False

        def call(*args):
            nonlocal tried
            if tried:
                return compiled_fn(*args)
            tried = True
            try:
                return compiled_fn(*args)
            except Exception as err:  # torch.compile raises many types
                get_logger().warning("compiling the student's %s failed (%s); running it eagerly", name,
                                     one_line(err, 200))
                eager = getattr(self, f"_eager_{name}")
                setattr(self, name, eager)
                self.compiled = False
                return eager(*args)

        return call

    def _loss(self, p: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self.net(p, x), y)

    def _eager_gradient(self, p: Tensor, x: Tensor, y: Tensor) -> Tensor:
        p = p.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(self._loss(p, x.detach(), y), p)[0]

    def _eager_hvp(self, p: Tensor, x: Tensor, y: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p, x = p.detach().requires_grad_(True), x.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self._loss(p, x, y), p, create_graph=True)
            hvp_p, vjp_x = torch.autograd.grad(grad, (p, x), grad_outputs=a)
        return grad.detach(), hvp_p, vjp_x

    def _func_gradient(self, p: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return torch.func.grad(self._loss)(p, x, y)

    def _func_hvp(self, p: Tensor, x: Tensor, y: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        grad, pullback = torch.func.vjp(lambda p, x: torch.func.grad(self._loss)(p, x, y), p, x)
        hvp_p, vjp_x = pullback(a)
        return grad, hvp_p, vjp_x


@dataclass
class TrajectoryGradients:
    loss: Tensor  # L, detached
    images: Tensor  # dL/dX, the shape of the synthetic images
    syn_lr: Tensor  # dL/dlr, a scalar
    final_params: Tensor  # p_N (for tests and diagnostics)


def match_trajectory(steps: StudentSteps, start: Tensor, target: Tensor, images: Tensor, labels: Tensor,
                     syn_lr: Tensor, draws: Sequence[StudentDraw], dsa: DSAParams = MTT_DSA) -> TrajectoryGradients:
    """L and its exact gradients with respect to the synthetic images and the student's learning rate, with one
    student step's graph in memory at a time (see the module docstring)."""
    images, lr, start = images.detach(), syn_lr.detach(), start.detach()
    # Forward: the student's trajectory, parameters only.
    trajectory = [start]
    for draw in draws:
        grad = steps.gradient(trajectory[-1], student_batch(images, draw, dsa), labels.index_select(0, draw.indices))
        trajectory.append(trajectory[-1] - lr * grad)
    final = trajectory[-1]
    distance = (final - target).square().sum()
    normalizer = (start - target).square().sum()
    # Backward: one rebuilt step at a time, from the last to the first.
    adjoint = 2 * (final - target) / normalizer
    grad_images = torch.zeros_like(images)
    grad_lr = torch.zeros_like(lr)
    for k in range(len(draws) - 1, -1, -1):
        draw = draws[k]
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            batch = student_batch(x, draw, dsa)  # the augmentation's graph, to carry (dg/d batch)^T a back to X
        grad, hvp_p, vjp_batch = steps.hvp(trajectory[k], batch.detach(), labels.index_select(0, draw.indices),
                                           adjoint)
        (vjp_x,) = torch.autograd.grad(batch, x, grad_outputs=vjp_batch)
        grad_lr -= (adjoint * grad).sum()
        grad_images -= lr * vjp_x
        adjoint = adjoint - lr * hvp_p
        trajectory[k + 1] = None  # p_{k+1} is no longer needed
    return TrajectoryGradients((distance / normalizer).detach(), grad_images, grad_lr, final.detach())
