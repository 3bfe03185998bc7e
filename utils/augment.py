"""Image augmentation for distillation and evaluation: DSA (Siamese, batched) and DC — the only copy.

Both families are written kornia-style: for every op there is a `draw_*` step that turns a
`torch.Generator` into explicit parameter tensors, and an `apply_*` step that is a pure, batched,
differentiable function of the images and those tensors. Callers and tests can therefore pass their own
parameters, and the random stream is never the global one. Where kornia's own op gives the same outputs for
the same parameters and is at least as fast (benchmarks/bench_kornia.py: the integer translation of both
crops, on colour images), the op calls kornia; the others are ours.

DSA (Zhao & Bilen, "Differentiable Siamese Augmentation"): parameters are drawn once per *group*
(typically the class) and gathered per sample, so the real and synthetic images of a class get the
identical transform in one call over all classes. Parameter ranges follow the paper code's `ParamDiffAug`.

DC (Zhao et al., "Dataset Condensation"): the evaluation-time augmentation of the paper code, where every
image independently picks one op of the strategy. Ops are computed for the whole batch and selected with
`torch.where`, so there is no per-image Python loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.seeding import randint_on_host

try:  # kornia is in requirements.txt; without it (e.g. a bare GPU image) the gather below gives the same values
    from kornia.geometry.transform import translate
except ImportError:  # pragma: no cover - depends on the environment
    translate = None

Params = dict[str, torch.Tensor]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (images, generator) -> augmented images

_IDENTITY_STRATEGIES = ("", "none", "None")


# ----------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------


def is_identity(strategy: str | None) -> bool:
    """None, '', 'none' and 'None' all mean: no augmentation."""
    return strategy is None or strategy.strip() in _IDENTITY_STRATEGIES


def parse_strategy(strategy: str | None, known: Sequence[str], family: str = "augmentation") -> list[str]:
    """'color_crop_flip' -> ['color', 'crop', 'flip']; 'none' / 'None' / '' / None -> [] (identity)."""
    if is_identity(strategy):
        return []
    parts = [part for part in strategy.strip().split("_") if part]
    unknown = [part for part in parts if part not in known]
    if unknown:
        raise UserError(
            f"unknown {family} op(s) {unknown} in strategy {strategy!r}; known ops: {', '.join(known)} "
            f"(join them with '_', or use 'none')"
        )
    return parts


def _uniform(num: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    # Always drawn in float32, so the same generator state gives the same parameters whatever the image dtype.
    return torch.rand(num, generator=generator, device=device) * (high - low) + low


def _randint(num: int, low: int, high: int, generator: torch.Generator, device) -> torch.Tensor:
    """Integers in [low, high) — like torch.randint, but an empty range (high <= low) yields `low`."""
    if high <= low:
        return torch.full((num,), low, dtype=torch.long, device=device)
    return torch.randint(low, high, (num,), generator=generator, device=device)


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) parameters -> (N, 1, 1, 1) in the images' dtype, to broadcast over C, H, W."""
    return values.to(dtype=x.dtype).view(-1, 1, 1, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Bilinear resampling of x through per-image 2x3 affine maps (output coords -> input coords)."""
    theta = theta.to(dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def _theta_dtype(x: torch.Tensor) -> torch.dtype:
    """cos/sin in the images' precision (at least float32), so float64 images get float64 rotations."""
    return torch.promote_types(x.dtype, torch.float32)


def _diag_theta(scale_w: torch.Tensor, scale_h: torch.Tensor) -> torch.Tensor:
    """(N,) factors -> (N, 2, 3) theta = [[sw, 0, 0], [0, sh, 0]] (affine_grid's x is the width axis)."""
    zero = torch.zeros_like(scale_w)
    return torch.stack([scale_w, zero, zero, zero, scale_h, zero], dim=1).view(-1, 2, 3)


def _rotation_theta(angle: torch.Tensor, aspect: float = 1.0) -> torch.Tensor:
    """(N,) radians -> (N, 2, 3) theta = [[cos, -sin*aspect, 0], [sin/aspect, cos, 0]], aspect = H / W.

    With aspect = 1 this is a rotation of the normalized [-1, 1]^2 square (the DSA paper code); with
    aspect = H / W it is a true rotation in pixel space for non-square images.
    """
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    return torch.stack([cos, -sin * aspect, zero, sin / aspect, cos, zero], dim=1).view(-1, 2, 3)


def _check_generator(generator: torch.Generator, x: torch.Tensor) -> None:
    if generator.device.type != x.device.type:
        raise ValueError(f"the generator lives on {generator.device} but the images on {x.device}")


# ----------------------------------------------------------------------------------------------------------
# DSA: parameters
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DSAParams:
    """The paper code's `ParamDiffAug` values. aug_mode 'S': one op per group (one per call when there are
    no groups); 'M': every op, in order.

    align_corners: how scale and rotate resample. The paper's distillation code (its DC/DSA/DM steps, inner
    loops and in-run evaluations) uses grid_sample's default, False; its validate.py uses True.
    """

    aug_mode: str = "S"
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5  # the cut square is 0.5 H x 0.5 W
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    align_corners: bool = True


DISTILLATION_DSA = DSAParams(align_corners=False)  # the paper's distillation copy of DiffAugment
DEFAULT_DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def draw_dsa_params(
    op: str,
    num_groups: int,
    im_shape: Sequence[int],
    generator: torch.Generator,
    device: torch.device | str,
    params: DSAParams = DSAParams(),
) -> Params:
    """Draw `op`'s parameters for `num_groups` groups: a dict of tensors with leading dim num_groups.

    The tensors hold the final transform values (an additive brightness, multiplicative factors, integer
    shifts, a box), so `apply_<op>` needs nothing but them. `im_shape` ends with (H, W).
    """
    g, dev = generator, device
    h, w = int(im_shape[-2]), int(im_shape[-1])
    if op == "color":
        return {
            "brightness": (_uniform(num_groups, 0.0, 1.0, g, dev) - 0.5) * params.brightness,
            "saturation": _uniform(num_groups, 0.0, 1.0, g, dev) * params.saturation,
            "contrast": _uniform(num_groups, 0.0, 1.0, g, dev) + params.contrast,
        }
    if op == "crop":
        # Shifts in [-s, s] inclusive, s = round(H * ratio); the paper names the H shift "x".
        shift_h, shift_w = int(h * params.ratio_crop_pad + 0.5), int(w * params.ratio_crop_pad + 0.5)
        return {
            "shift_h": _randint(num_groups, -shift_h, shift_h + 1, g, dev),
            "shift_w": _randint(num_groups, -shift_w, shift_w + 1, g, dev),
        }
    if op == "cutout":
        size_h, size_w = int(h * params.ratio_cutout + 0.5), int(w * params.ratio_cutout + 0.5)
        # An even-sized square may also be centred one past the last row, as in the paper code.
        return {
            "center_h": _randint(num_groups, 0, h + (1 - size_h % 2), g, dev),
            "center_w": _randint(num_groups, 0, w + (1 - size_w % 2), g, dev),
            "size_h": torch.full((num_groups,), size_h, dtype=torch.long, device=dev),
            "size_w": torch.full((num_groups,), size_w, dtype=torch.long, device=dev),
        }
    if op == "flip":
        return {"flip": _uniform(num_groups, 0.0, 1.0, g, dev) < params.prob_flip}
    if op == "scale":
        low, high = 1.0 / params.ratio_scale, params.ratio_scale
        return {
            "scale_w": _uniform(num_groups, low, high, g, dev),
            "scale_h": _uniform(num_groups, low, high, g, dev),
        }
    if op == "rotate":
        max_rad = params.ratio_rotate / 180.0 * torch.pi
        return {"angle": _uniform(num_groups, -max_rad, max_rad, g, dev)}
    raise UserError(f"unknown DSA op {op!r}; known ops: {', '.join(DSA_OPS)}")


def gather_params(params: Params, index: torch.Tensor) -> Params:
    """Per-group parameters -> per-sample parameters (sample i gets group index[i]'s values)."""
    return {name: value.index_select(0, index) for name, value in params.items()}


# ----------------------------------------------------------------------------------------------------------
# DSA: ops (pure functions of the images and per-sample parameter tensors)
# ----------------------------------------------------------------------------------------------------------


def apply_color(x: torch.Tensor, p: Params) -> torch.Tensor:
    """Brightness, then saturation (about each pixel's channel mean), then contrast (about the image mean)."""
    x = x + _per_image(p["brightness"], x)
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * _per_image(p["saturation"], x) + gray
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_image(p["contrast"], x) + mean


def _window_gather(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[n, c, h, w] = padded[n, c, rows[n, h], cols[n, w]]; two gathers, differentiable w.r.t. padded."""
    n, c = padded.shape[:2]
    h, w = rows.shape[1], cols.shape[1]
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


KORNIA_TRANSLATE_MIN_CHANNELS = 3  # kornia's translate pays from 3 channels on (one grid for every channel)


def _translate(x: torch.Tensor, shift_h: torch.Tensor, shift_w: torch.Tensor) -> torch.Tensor:
    """out[n, :, i, j] = x[n, :, i + shift_h[n], j + shift_w[n]] for integer shifts, 0 outside the image.

    Colour images: kornia's translate (nearest-neighbour sampling at exactly the pixel centres, so the very
    values and gradients of a gather), 1.1-1.5x as fast as our gather on CPU. Grey images: our gather, 2-3x
    as fast as kornia there (benchmarks/bench_kornia.py: kornia samples one grid for all channels, the
    gather reads each channel)."""
    if translate is not None and x.shape[1] >= KORNIA_TRANSLATE_MIN_CHANNELS and x.device.type == "cpu":
        # (on a GPU the gather: the same values in ~8 kernel launches instead of kornia's ~40)
        moved = torch.stack([-shift_w, -shift_h], dim=1).to(x.dtype)  # kornia moves the content by +t
        return translate(x, moved, mode="nearest", padding_mode="zeros", align_corners=True)
    _, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))  # one zero pixel around; indexes clamped into it read 0
    rows = (torch.arange(h, device=x.device) + shift_h.view(-1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device) + shift_w.view(-1, 1) + 1).clamp(0, w + 1)
    return _window_gather(padded, rows, cols)


def apply_crop(x: torch.Tensor, p: Params) -> torch.Tensor:
    """Translate by integer shifts; pixels from outside are 0 (the paper code reads a 1-pixel zero border
    with clamped indexes: the same values)."""
    return _translate(x, p["shift_h"], p["shift_w"])


def _span(center: torch.Tensor, size: torch.Tensor, length: int) -> torch.Tensor:
    """(N, length) bool: which indices the cut covers. The paper clamps each of the `size` indices
    center - size//2 + k into [0, length-1]; that set is exactly the clamped interval [lo, hi]."""
    start = center - size // 2
    lo, hi = start.clamp(0, length - 1), (start + size - 1).clamp(0, length - 1)
    idx = torch.arange(length, device=center.device)
    return (idx >= lo.view(-1, 1)) & (idx <= hi.view(-1, 1)) & (size > 0).view(-1, 1)


def apply_cutout(x: torch.Tensor, p: Params) -> torch.Tensor:
    """Zero one rectangle per image; a constant mask, so the gradient flows to the pixels that are kept."""
    _, _, h, w = x.shape
    rows = _span(p["center_h"], p["size_h"], h)
    cols = _span(p["center_w"], p["size_w"], w)
    keep = ~(rows.unsqueeze(2) & cols.unsqueeze(1))
    return x * keep.unsqueeze(1).to(x.dtype)


def apply_flip(x: torch.Tensor, p: Params) -> torch.Tensor:
    """Horizontal flip (last dim) where p['flip'] is True."""
    return torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(-1), x)


def apply_scale(x: torch.Tensor, p: Params, align_corners: bool = True) -> torch.Tensor:
    """theta = diag(sx, sy) on the normalized grid: sx > 1 shrinks the content."""
    return _affine(x, _diag_theta(p["scale_w"], p["scale_h"]), align_corners=align_corners)


def apply_rotate(x: torch.Tensor, p: Params, align_corners: bool = True) -> torch.Tensor:
    """theta = [[cos a, -sin a, 0], [sin a, cos a, 0]] on the normalized grid, as the paper code."""
    return _affine(x, _rotation_theta(p["angle"].to(_theta_dtype(x))), align_corners=align_corners)


DSA_OPS: dict[str, Callable[[torch.Tensor, Params], torch.Tensor]] = {
    "color": apply_color,
    "crop": apply_crop,
    "cutout": apply_cutout,
    "flip": apply_flip,
    "scale": apply_scale,
    "rotate": apply_rotate,
}
_RESAMPLING_OPS = ("scale", "rotate")  # the ops that take align_corners


def apply_dsa_op(op: str, x: torch.Tensor, p: Params, settings: DSAParams = DSAParams()) -> torch.Tensor:
    """One DSA op on x with per-sample parameters p."""
    if op in _RESAMPLING_OPS:
        return DSA_OPS[op](x, p, align_corners=settings.align_corners)
    return DSA_OPS[op](x, p)


@dataclass(frozen=True)
class DSAPlan:
    """The random part of one grouped DSA call, drawn before any image is touched: which op each group
    gets (mode 'S') and every op's parameters for every group."""

    ops: list[str]
    choice: torch.Tensor | None  # (G,) index into ops per group (mode 'S'); None: every op in order ('M')
    params: dict[str, Params]  # op -> {name: (G, ...) tensor}
    chosen: list[int] | None = None  # `choice` on the host (read without waiting for the device's queue)


def draw_dsa_plan(ops: list[str], num_groups: int, im_shape: Sequence[int], generator: torch.Generator,
                  device: torch.device | str, settings: DSAParams = DSAParams()) -> DSAPlan:
    """Draw order (fixed, for reproducibility): in mode 'S' the op of every group, then each op's parameters
    for all groups in strategy order (also for ops no group drew, so the draws never depend on the choice)."""
    choice, chosen = None, None
    if settings.aug_mode == "S":
        choice, chosen = randint_on_host(len(ops), num_groups, generator)
    params = {op: draw_dsa_params(op, num_groups, im_shape, generator, device, settings) for op in ops}
    return DSAPlan(list(ops), choice, params, chosen)


def apply_dsa_plan(x: torch.Tensor, plan: DSAPlan, groups: torch.Tensor,
                   settings: DSAParams = DSAParams(), per_group: int | None = None) -> torch.Tensor:
    """Augment x (N, C, H, W), sample i as group groups[i] drew. Mode 'S': each op runs once, on the
    samples whose group drew it (so every image is augmented once, with at most len(ops) calls).
    per_group: every group has this many samples (e.g. class-major batches), so the samples per op are
    known on the host without reading `groups` back."""
    if plan.choice is None:
        for op in plan.ops:
            x = apply_dsa_op(op, x, gather_params(plan.params[op], groups), settings)
        return x
    counts = None
    if per_group is not None and plan.chosen is not None:
        counts = [per_group * plan.chosen.count(k) for k in range(len(plan.ops))]
    return _apply_each_op_once(x, plan.choice.index_select(0, groups), plan.ops,
                               lambda k, idx: gather_params(plan.params[plan.ops[k]], groups[idx]), settings,
                               counts)


def _apply_each_op_once(x: torch.Tensor, sample_op: torch.Tensor, ops: list[str],
                        op_params: Callable[[int, torch.Tensor], Params], settings: DSAParams,
                        counts: list[int] | None = None) -> torch.Tensor:
    """Sample i gets ops[sample_op[i]]; each op runs once, on its samples idx (ascending), with the
    parameters op_params(k, idx) of those samples in that order. counts: samples per op, when the host knows
    them (else read from the device)."""
    order = torch.argsort(sample_op, stable=True)  # the samples of op 0, then of op 1, ...
    if counts is None:
        counts = torch.bincount(sample_op, minlength=len(ops)).tolist()
    pieces = [apply_dsa_op(op, x.index_select(0, idx), op_params(k, idx), settings)
              for k, (op, idx) in enumerate(zip(ops, order.split(counts))) if len(idx)]
    return torch.empty_like(x).index_copy(0, order, torch.cat(pieces))


def dsa_augment(
    x: torch.Tensor,
    strategy: str | None,
    generator: torch.Generator,
    groups: torch.Tensor | None = None,
    params: DSAParams = DSAParams(),
    num_groups: int | None = None,
) -> torch.Tensor:
    """Differentiable Siamese augmentation of a batch x (N, C, H, W).

    groups: optional LongTensor (N,) of ids in [0, G). Each group draws its own op (mode 'S') and its own
    parameters, shared by all its images: e.g. the real + synthetic images of a class with group = class id,
    as the paper's per-class DiffAugment calls with one seed per class. num_groups: G, when known, saves
    reading groups.max() back from the device and makes the draws independent of which groups are present.
    None: the paper's plain call — ONE op (mode 'S') for the whole batch, every image its own parameters.
    Mode 'M' applies every op, in order. All randomness comes from `generator` (on x's device).
    """
    ops = parse_strategy(strategy, tuple(DSA_OPS), "DSA")
    if not ops or x.shape[0] == 0:
        return x
    _check_generator(generator, x)
    if params.aug_mode not in ("S", "M"):
        raise UserError(f"unknown DSA aug_mode {params.aug_mode!r}; use 'S' (one op) or 'M' (all ops)")
    if groups is None:
        if params.aug_mode == "S":
            ops = [ops[randint_on_host(len(ops), 1, generator)[1][0]]]
        for op in ops:
            x = apply_dsa_op(op, x, draw_dsa_params(op, x.shape[0], x.shape, generator, x.device, params), params)
        return x.contiguous()
    if groups.dim() != 1 or groups.shape[0] != x.shape[0]:
        raise ValueError(f"groups must have shape ({x.shape[0]},), got {tuple(groups.shape)}")
    groups = groups.to(device=x.device, dtype=torch.long)
    count = int(num_groups) if num_groups is not None else int(groups.max().item()) + 1
    plan = draw_dsa_plan(ops, count, x.shape, generator, x.device, params)
    return apply_dsa_plan(x, plan, groups, params).contiguous()


def siamese_augment(real: torch.Tensor, syn: torch.Tensor, strategy: str | None, generator: torch.Generator,
                    params: DSAParams = DISTILLATION_DSA) -> tuple[torch.Tensor, torch.Tensor]:
    """DSA on class-major real (C, n, ...) and synthetic (C, ipc, ...) images: one draw per class (its op in
    mode 'S' and its parameters), so the real and synthetic images of a class get the identical transform
    (the paper's shared seed) and every class its own. The real images take no gradient: they are
    augmented without autograd, and only the synthetic side is recorded for the backward pass."""
    ops = parse_strategy(strategy, tuple(DSA_OPS), "DSA")
    if not ops:
        return real, syn
    _check_generator(generator, syn)
    num_classes = real.shape[0]
    plan = draw_dsa_plan(ops, num_classes, real.shape, generator, real.device, params)
    classes = torch.arange(num_classes, device=real.device)
    with torch.set_grad_enabled(real.requires_grad and torch.is_grad_enabled()):
        out_real = apply_dsa_plan(real.flatten(0, 1), plan, classes.repeat_interleave(real.shape[1]), params,
                                  real.shape[1])
    out_syn = apply_dsa_plan(syn.flatten(0, 1), plan, classes.repeat_interleave(syn.shape[1]), params, syn.shape[1])
    return out_real.view(real.shape), out_syn.view(syn.shape)


class DSAAugmenter:
    """`augment(x, generator)`: DSA with one op per call and every image its own parameters (the paper's
    plain DiffAugment call). `augment.members(x, generators)` does K such calls — one per model of an
    ensemble, each drawing from its own generator exactly as alone — with each op applied once to the
    batches of all members that drew it."""

    def __init__(self, strategy: str, params: DSAParams = DSAParams()):
        self.ops, self.params = parse_strategy(strategy, tuple(DSA_OPS), "DSA"), params
        self.strategy = strategy

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return dsa_augment(x, self.strategy, generator, params=self.params)

    def members(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """x (K, B, C, H, W), member k drawing from generators[k]; the same result as stacking K calls."""
        k, b = x.shape[:2]
        draws = [self._draw(b, x, generator) for generator in generators]  # per member: [(op, params), ...]
        flat = x.flatten(0, 1)
        if self.params.aug_mode == "S":  # one op per member: each op once, on the members that drew it
            member_op = [self.ops.index(draw[0][0]) for draw in draws]

            def op_params(op_index: int, idx: torch.Tensor) -> Params:
                drew = [draws[m][0][1] for m in range(k) if member_op[m] == op_index]  # ascending, as idx
                return {name: torch.cat([p[name] for p in drew]) for name in drew[0]}

            # the members' draws, as device tensors (no copy from the host): each member's op for its b images
            sample_op = torch.cat([draw[0][2] for draw in draws]).repeat_interleave(b)
            counts = [b * member_op.count(op) for op in range(len(self.ops))]
            return _apply_each_op_once(flat, sample_op, self.ops, op_params, self.params, counts).view(x.shape)
        for step, op in enumerate(self.ops):  # mode 'M': every op in order, for every member
            params = {name: torch.cat([draw[step][1][name] for draw in draws]) for name in draws[0][step][1]}
            flat = apply_dsa_op(op, flat, params, self.params)
        return flat.contiguous().view(x.shape)

    def _draw(self, b: int, x: torch.Tensor, generator: torch.Generator) -> list[tuple]:
        """One member's draws, in __call__'s order: its op (mode 'S'; with the draw as a device tensor), then
        the parameters of its images: [(op, params[, drawn op]), ...]."""
        _check_generator(generator, x)
        if self.params.aug_mode == "S":
            pick, [k] = randint_on_host(len(self.ops), 1, generator)
            op = self.ops[k]
            return [(op, draw_dsa_params(op, b, x.shape, generator, x.device, self.params), pick)]
        return [(op, draw_dsa_params(op, b, x.shape, generator, x.device, self.params)) for op in self.ops]


def dsa_augmenter(strategy: str | None, params: DSAParams = DSAParams()) -> DSAAugmenter | None:
    """A DSAAugmenter for `strategy`; None for no augmentation. Unknown ops are refused here, before any
    training starts."""
    parse_strategy(strategy, tuple(DSA_OPS), "DSA")
    if is_identity(strategy):
        return None
    return DSAAugmenter(strategy, params)


# ----------------------------------------------------------------------------------------------------------
# DC augmentation (evaluation without DSA)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DCParams:
    """The paper code's DC augmentation settings (its get_daparam)."""

    crop: int = 4  # pixels
    scale: float = 0.2
    rotate: int = 45  # degrees
    noise: float = 0.001  # standard deviation


def draw_dc_params(op: str, num: int, im_shape: Sequence[int], generator: torch.Generator,
                   device: torch.device | str, settings: DCParams = DCParams()) -> Params:
    """Per-image parameters of one DC op; `im_shape` ends with (C, H, W)."""
    g, dev = generator, device
    crop, scale, rotate, noise = settings.crop, settings.scale, settings.rotate, settings.noise
    if op == "crop":  # the paper's window offset permutation(2*crop)[0] in the padded image, minus crop
        return {
            "shift_h": _randint(num, 0, 2 * crop, g, dev) - crop,
            "shift_w": _randint(num, 0, 2 * crop, g, dev) - crop,
        }
    if op == "scale":
        return {
            "scale_h": _uniform(num, 1.0 - scale, 1.0 + scale, g, dev),
            "scale_w": _uniform(num, 1.0 - scale, 1.0 + scale, g, dev),
        }
    if op == "rotate":  # integer degrees in [-rotate, rotate), as np.random.randint(-rotate, rotate)
        return {"angle": _randint(num, -int(rotate), int(rotate), g, dev).float()}
    if op == "noise":
        shape = (num, *(int(s) for s in im_shape[-3:]))
        return {"noise": noise * torch.randn(shape, generator=g, device=dev)}
    raise UserError(f"unknown DC augmentation op {op!r}; known ops: {', '.join(DC_OPS)}")


def apply_dc_crop(x: torch.Tensor, p: Params) -> torch.Tensor:
    """Translate by (shift_h, shift_w); pixels from outside the image get the per-channel batch mean.

    This is the paper's "pad by `crop` pixels with the channel mean, take the H x W window at offset
    o in [0, 2*crop)" with shift = o - crop, written without the pad so the op needs no pad width.
    """
    fill = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    # Translating (x - fill) with zeros outside, then adding fill back, fills the outside with `fill`.
    return _translate(x - fill, p["shift_h"], p["shift_w"]) + fill


def apply_dc_scale(x: torch.Tensor, p: Params) -> torch.Tensor:
    """Resize by (scale_h, scale_w) about the image centre, background 0.

    Convention: theta = diag(1/scale_w, 1/scale_h) with align_corners=False, i.e. the output pixel at
    distance d from the centre (in pixels) reads the input at d / scale — an image of H x W pixels is
    stretched to scale_h*H x scale_w*W and centre-cropped/zero-padded back (bilinear, where the paper
    code uses nearest-neighbour F.interpolate).
    """
    dtype = _theta_dtype(x)
    theta = _diag_theta(1.0 / p["scale_w"].to(dtype), 1.0 / p["scale_h"].to(dtype))
    return _affine(x, theta, align_corners=False)


def apply_dc_rotate(x: torch.Tensor, p: Params) -> torch.Tensor:
    """Rotate by p['angle'] degrees about the centre (positive = counter-clockwise as displayed, row 0 on
    top, like scipy.ndimage.rotate), bilinear; the uncovered corners get the mean of the channel means."""
    fill = x.mean(dim=(0, 2, 3)).mean()
    radians = p["angle"].to(_theta_dtype(x)) * (torch.pi / 180.0)
    theta = _rotation_theta(radians, aspect=x.shape[2] / x.shape[3])
    # Rotating (x - fill) with zero padding then adding fill back fills the corners with `fill`.
    return _affine(x - fill, theta, align_corners=False) + fill


def apply_dc_noise(x: torch.Tensor, p: Params) -> torch.Tensor:
    """Additive Gaussian noise (already scaled by the noise std when drawn)."""
    return x + p["noise"].to(x.dtype)


DC_OPS: dict[str, Callable[[torch.Tensor, Params], torch.Tensor]] = {
    "crop": apply_dc_crop,
    "scale": apply_dc_scale,
    "rotate": apply_dc_rotate,
    "noise": apply_dc_noise,
}


def dc_augment(x: torch.Tensor, strategy: str | None, generator: torch.Generator,
               settings: DCParams = DCParams()) -> torch.Tensor:
    """The paper code's DC augmentation: every image picks ONE op of the strategy uniformly at random.

    Draw order (fixed, for reproducibility): the per-image op choice, then each op's parameters for the
    whole batch in strategy order. Each op runs on the whole batch and torch.where keeps the chosen one.
    """
    ops = parse_strategy(strategy, tuple(DC_OPS), "DC augmentation")
    n = x.shape[0]
    if not ops or n == 0:
        return x
    _check_generator(generator, x)
    choice = torch.randint(len(ops), (n,), generator=generator, device=x.device)
    out = x
    for k, op in enumerate(ops):
        drawn = draw_dc_params(op, n, x.shape, generator, x.device, settings)
        out = torch.where((choice == k).view(-1, 1, 1, 1), DC_OPS[op](x, drawn), out)
    return out


def dc_augmenter(strategy: str | None) -> Augment | None:
    """`augment(x, generator)` applying DC augmentation with `strategy`; None for no augmentation."""
    parse_strategy(strategy, tuple(DC_OPS), "DC augmentation")
    if is_identity(strategy):
        return None
    return lambda x, generator: dc_augment(x, strategy, generator)


def dc_aug_strategy(dataset: str, model_name: str) -> str:
    """The paper's get_daparam rule: 'crop_scale_rotate' for MNIST, overridden by 'crop_noise' for
    BatchNorm models, else 'none'. The paper tests model == 'ConvNetBN'; for our larger model list a
    model is a BatchNorm model when its name contains 'BN' (ConvNetBN, AlexNetBN, VGG11BN, ResNet18BN_AP).
    """
    if "BN" in model_name:
        return "crop_noise"
    if dataset == "MNIST":
        return "crop_scale_rotate"
    return "none"
