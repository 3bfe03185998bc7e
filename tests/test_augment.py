"""utils/augment.py: batched ops against slow per-image references, Siamese groups, RNG hygiene, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from utils.augment import (
    DC_OPS,
    DSA_OPS,
    DSAParams,
    apply_dsa_op,
    dc_aug_strategy,
    dc_augment,
    draw_dc_params,
    draw_dsa_params,
    draw_dsa_plan,
    dsa_augment,
    dsa_augmenter,
)
from utils.errors import UserError

SHAPES = [(1, 8, 8), (3, 32, 32)]
FULL = "color_crop_cutout_flip_scale_rotate"
ALL_M = DSAParams(aug_mode="M")


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def images(shape, n=6, seed=1, dtype=torch.float64):
    return torch.randn((n, *shape), generator=gen(seed), dtype=dtype)


def clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def affine_one(img: torch.Tensor, theta: list[list[float]], align_corners: bool) -> torch.Tensor:
    """One image through its own affine_grid call (the slow reference for scale / rotate)."""
    th = torch.tensor([theta], dtype=img.dtype)
    grid = F.affine_grid(th, [1, *img.shape], align_corners=align_corners)
    out = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return out[0]


# ---------------------------------------------------------------- slow DSA references, one image at a time


def slow_dsa(op: str, img: torch.Tensor, p: dict, align_corners: bool = True) -> torch.Tensor:
    c, h, w = img.shape
    if op == "color":
        img = img + p["brightness"]
        gray = img.mean(dim=0, keepdim=True)
        img = (img - gray) * p["saturation"] + gray
        return (img - img.mean()) * p["contrast"] + img.mean()
    if op == "crop":
        pad = F.pad(img, (1, 1, 1, 1))
        out = torch.empty_like(img)
        for i in range(h):
            for j in range(w):
                src_i = clamp(i + p["shift_h"] + 1, 0, h + 1)
                src_j = clamp(j + p["shift_w"] + 1, 0, w + 1)
                out[:, i, j] = pad[:, src_i, src_j]
        return out
    if op == "cutout":
        out = img.clone()
        sh, sw = p["size_h"], p["size_w"]
        for k in range(sh):
            for m in range(sw):
                row = clamp(p["center_h"] - sh // 2 + k, 0, h - 1)
                col = clamp(p["center_w"] - sw // 2 + m, 0, w - 1)
                out[:, row, col] = 0
        return out
    if op == "flip":
        return img.flip(-1) if p["flip"] else img
    if op == "scale":
        return affine_one(img, [[p["scale_w"], 0, 0], [0, p["scale_h"], 0]], align_corners)
    if op == "rotate":
        a = p["angle"]
        return affine_one(img, [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]], align_corners)
    raise AssertionError(op)


def per_image(params: dict, i: int) -> dict:
    return {k: v[i].item() for k, v in params.items()}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", list(DSA_OPS))
def test_dsa_op_matches_per_image_reference(op, shape):
    x = images(shape)
    p = draw_dsa_params(op, x.shape[0], x.shape, gen(3), "cpu")
    if op == "flip":  # make sure both branches are exercised
        p["flip"] = torch.tensor([True, False] * 3)
    for align_corners in (True, False):
        out = apply_dsa_op(op, x, p, DSAParams(align_corners=align_corners))
        ref = torch.stack([slow_dsa(op, x[i], per_image(p, i), align_corners) for i in range(x.shape[0])])
        assert out.shape == x.shape and out.dtype == x.dtype
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_align_corners_changes_only_scale_and_rotate():
    x = images((3, 8, 8))
    for op in DSA_OPS:
        p = draw_dsa_params(op, x.shape[0], x.shape, gen(4), "cpu")
        same = torch.equal(apply_dsa_op(op, x, p, DSAParams(align_corners=True)),
                           apply_dsa_op(op, x, p, DSAParams(align_corners=False)))
        assert same == (op not in ("scale", "rotate")), op


def test_dsa_crop_and_cutout_edge_parameters():
    x = images((2, 8, 8), n=4)
    crop = {"shift_h": torch.tensor([-1, 1, 0, 1]), "shift_w": torch.tensor([1, -1, 0, 1])}
    cut = {
        k: torch.tensor(v)
        for k, v in {
            "center_h": [0, 8, 3, 7],
            "center_w": [8, 0, 4, 7],
            "size_h": [4] * 4,
            "size_w": [4] * 4,
        }.items()
    }
    for op, p in (("crop", crop), ("cutout", cut)):
        ref = torch.stack([slow_dsa(op, x[i], per_image(p, i)) for i in range(4)])
        torch.testing.assert_close(DSA_OPS[op](x, p), ref, atol=1e-6, rtol=0)


def test_dsa_parameter_ranges():
    p = DSAParams()
    n, shape = 4000, (3, 32, 32)
    crop = draw_dsa_params("crop", n, shape, gen(), "cpu", p)
    assert crop["shift_h"].min() == -4 and crop["shift_h"].max() == 4  # int(32 * 0.125 + 0.5) = 4
    cut = draw_dsa_params("cutout", n, shape, gen(), "cpu", p)
    assert cut["size_h"].unique().tolist() == [16]
    assert cut["center_h"].min() == 0 and cut["center_h"].max() == 32  # even size: one past the end
    scale = draw_dsa_params("scale", n, shape, gen(), "cpu", p)["scale_w"]
    assert 1 / 1.2 <= scale.min() and scale.max() <= 1.2
    angle = draw_dsa_params("rotate", n, shape, gen(), "cpu", p)["angle"]
    assert angle.abs().max() <= math.radians(15) and angle.abs().max() > math.radians(14)
    flip = draw_dsa_params("flip", n, shape, gen(), "cpu", p)["flip"].float().mean()
    assert 0.45 < flip < 0.55


@pytest.mark.parametrize("align_corners", [True, False])
def test_op_per_group_equals_a_slow_per_group_loop_given_the_same_draws(align_corners):
    """Mode 'S' with groups: each group draws its op, and the batched call equals applying each group's op
    with its parameters one image at a time (float64, atol 1e-6)."""
    settings = DSAParams(align_corners=align_corners)
    x = images((3, 8, 8), n=12)
    groups = torch.tensor([0, 2, 1, 0, 2, 1, 3, 3, 0, 1, 2, 3])
    out = dsa_augment(x, FULL, gen(7), groups=groups, params=settings, num_groups=4)
    plan = draw_dsa_plan(FULL.split("_"), 4, x.shape, gen(7), "cpu", settings)  # the same draws
    ref = []
    for i, group in enumerate(groups.tolist()):
        op = plan.ops[int(plan.choice[group])]
        ref.append(slow_dsa(op, x[i], per_image(plan.params[op], group), align_corners))
    torch.testing.assert_close(out, torch.stack(ref), atol=1e-6, rtol=0)


def test_every_class_can_receive_every_op_and_classes_differ():
    g, num_classes, ops = gen(3), 10, FULL.split("_")
    seen = [set() for _ in range(num_classes)]
    calls_with_several_ops = 0
    for _ in range(60):
        plan = draw_dsa_plan(ops, num_classes, (3, 8, 8), g, "cpu")
        for c in range(num_classes):
            seen[c].add(int(plan.choice[c]))
        calls_with_several_ops += len(set(plan.choice.tolist())) > 1
    assert all(s == set(range(len(ops))) for s in seen)
    assert calls_with_several_ops == 60  # one op for all 10 classes has probability 6 * 6**-10 per call


def test_grouped_mode_s_augments_each_image_once_with_its_groups_op():
    x = images((1, 8, 8), n=40)
    groups = torch.arange(40) % 20
    out = dsa_augment(x, "flip_cutout", gen(1), groups=groups)
    applied = []
    for o, xi in zip(out, x):
        is_flip = torch.equal(o, xi) or torch.equal(o, xi.flip(-1))
        is_cutout = bool(((o == xi) | (o == 0)).all() and (o == 0).any())  # a cutout always cuts
        assert is_flip != is_cutout
        applied.append(is_flip)
    applied = torch.tensor(applied)
    assert torch.equal(applied[:20], applied[20:])  # both images of a group: the same op
    assert 0 < int(applied.sum()) < 40  # and the groups did not all draw the same one


# ---------------------------------------------------------------- Siamese groups


@pytest.mark.parametrize("mode", ["S", "M"])
@pytest.mark.parametrize("strategy", [*DSA_OPS, FULL])
def test_siamese_groups_share_the_transform(strategy, mode):
    base = images((3, 16, 16), n=4)
    groups = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 0])  # "real" then "synthetic" images of 4 classes
    out = dsa_augment(base[groups], strategy, gen(5), groups=groups, params=DSAParams(aug_mode=mode))
    for k in range(4):
        members = out[groups == k]
        for m in members[1:]:
            assert torch.equal(m, members[0])


def test_groups_get_different_parameters_and_ungrouped_samples_too():
    one = images((3, 16, 16), n=1).expand(8, -1, -1, -1)
    grouped = dsa_augment(one, FULL, gen(2), groups=torch.arange(8) % 4, params=ALL_M)
    assert not torch.allclose(grouped[0], grouped[1])
    free = dsa_augment(one, FULL, gen(2), params=ALL_M)
    assert len({tuple(free[i].flatten()[:20].tolist()) for i in range(8)}) == 8


def test_num_groups_argument_matches_inferred_count():
    x = images((3, 8, 8), n=5)
    groups = torch.tensor([0, 1, 2, 1, 0])
    a = dsa_augment(x, FULL, gen(4), groups=groups, params=ALL_M)
    b = dsa_augment(x, FULL, gen(4), groups=groups, params=ALL_M, num_groups=3)
    assert torch.equal(a, b)


# ---------------------------------------------------------------- reproducibility and RNG hygiene


@pytest.mark.parametrize("mode", ["S", "M"])
def test_dsa_reproducible_and_global_rng_untouched(mode):
    x = images((3, 16, 16), n=6)
    params = DSAParams(aug_mode=mode)
    state = torch.get_rng_state()
    a = dsa_augment(x, FULL, gen(11), groups=torch.arange(6) % 3, params=params)
    b = dsa_augment(x, FULL, gen(11), groups=torch.arange(6) % 3, params=params)
    assert torch.equal(a, b)
    others = [dsa_augment(x, FULL, gen(s), groups=torch.arange(6) % 3, params=params) for s in range(12, 16)]
    assert any(not torch.equal(a, o) for o in others)
    assert torch.equal(torch.get_rng_state(), state)


def test_dc_reproducible_and_global_rng_untouched():
    x = images((3, 16, 16), n=6)
    state = torch.get_rng_state()
    a, b = dc_augment(x, "crop_scale_rotate_noise", gen(3)), dc_augment(x, "crop_scale_rotate_noise", gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, dc_augment(x, "crop_scale_rotate_noise", gen(4)))
    assert torch.equal(torch.get_rng_state(), state)


def test_mode_s_applies_exactly_one_op_and_uses_each():
    x = images((1, 8, 8), n=3)
    g, seen = gen(0), set()
    for _ in range(40):
        out = dsa_augment(x, "flip_cutout", g, params=DSAParams(aug_mode="S"))
        is_flip = all(torch.equal(o, xi) or torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x))
        is_cutout = bool(((out == x) | (out == 0)).all() and (out == 0).any())  # a cutout always cuts
        assert is_flip != is_cutout
        seen.add("flip" if is_flip else "cutout")
    assert seen == {"flip", "cutout"}


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("op", list(DSA_OPS))
def test_dsa_gradients_flow(op):
    x = images((3, 8, 8), n=4, dtype=torch.float32).requires_grad_()
    dsa_augment(x, op, gen(1), groups=torch.tensor([0, 1, 0, 1])).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # The op is linear/smooth in x for fixed parameters: autograd agrees with finite differences.
    small = images((2, 4, 4), n=2).requires_grad_()
    p = draw_dsa_params(op, 2, small.shape, gen(2), "cpu")
    assert torch.autograd.gradcheck(lambda t: DSA_OPS[op](t, p), (small,))


@pytest.mark.parametrize("op", list(DC_OPS))
def test_dc_gradients_flow(op):
    x = images((3, 8, 8), n=4, dtype=torch.float32).requires_grad_()
    dc_augment(x, op, gen(1)).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- DC augmentation


def slow_dc(op: str, img: torch.Tensor, p: dict, batch: torch.Tensor, crop: int = 4) -> torch.Tensor:
    c, h, w = img.shape
    if op == "crop":  # the paper's construction: mean-padded canvas, H x W window at offset shift + crop
        means = [batch[:, ch].mean() for ch in range(c)]
        canvas = torch.zeros(c, h + 2 * crop, w + 2 * crop, dtype=img.dtype)
        for ch in range(c):
            canvas[ch] = means[ch]
        canvas[:, crop : crop + h, crop : crop + w] = img
        r, q = p["shift_h"] + crop, p["shift_w"] + crop
        return canvas[:, r : r + h, q : q + w]
    if op == "scale":
        return affine_one(img, [[1 / p["scale_w"], 0, 0], [0, 1 / p["scale_h"], 0]], align_corners=False)
    if op == "rotate":
        fill = torch.stack([batch[:, ch].mean() for ch in range(c)]).mean()
        a = math.radians(p["angle"])
        theta = [[math.cos(a), -math.sin(a) * h / w, 0], [math.sin(a) * w / h, math.cos(a), 0]]
        return affine_one(img - fill, theta, align_corners=False) + fill
    if op == "noise":
        return img + p["noise"]
    raise AssertionError(op)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", list(DC_OPS))
def test_dc_op_matches_per_image_reference(op, shape):
    x = images(shape)
    p = draw_dc_params(op, x.shape[0], x.shape, gen(3), "cpu")
    out = DC_OPS[op](x, p)
    refs = [
        slow_dc(op, x[i], {k: v[i] if op == "noise" else v[i].item() for k, v in p.items()}, x)
        for i in range(x.shape[0])
    ]
    torch.testing.assert_close(out, torch.stack(refs), atol=1e-6, rtol=0)


def test_dc_augment_per_image_choice_matches_explicit_draws():
    x = images((3, 8, 8), n=12)
    strategy, g = "crop_scale_rotate_noise", gen(9)
    out = dc_augment(x, strategy, gen(9))
    ops = strategy.split("_")
    choice = torch.randint(len(ops), (12,), generator=g)
    drawn = {op: draw_dc_params(op, 12, x.shape, g, "cpu") for op in ops}
    for i in range(12):
        op = ops[choice[i]]
        p = {k: v[i] if op == "noise" else v[i].item() for k, v in drawn[op].items()}
        torch.testing.assert_close(out[i], slow_dc(op, x[i], p, x), atol=1e-6, rtol=0)
    assert len(set(choice.tolist())) > 1


def bilinear(img: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Sample img (C, H, W) at fractional pixel positions, zero outside: a pixel-space reference."""
    c, h, w = img.shape
    out = torch.zeros(c, *rows.shape, dtype=img.dtype)
    r0, c0 = rows.floor().long(), cols.floor().long()
    for dr in (0, 1):
        for dc in (0, 1):
            rr, cc = r0 + dr, c0 + dc
            weight = (1 - (rows - rr).abs()) * (1 - (cols - cc).abs())
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            out += torch.where(ok, weight, 0) * img[:, rr.clamp(0, h - 1), cc.clamp(0, w - 1)]
    return out


def test_dc_geometry_in_pixel_space():
    """Scale is centred, rotation is a true pixel-space rotation about the centre (non-square too)."""
    x = images((2, 8, 12), n=1)
    h, w = 8, 12
    dy = torch.arange(h, dtype=x.dtype).view(-1, 1) - (h - 1) / 2
    dx = torch.arange(w, dtype=x.dtype).view(1, -1) - (w - 1) / 2
    sh, sw = 1.15, 0.85
    out = DC_OPS["scale"](x, {"scale_h": torch.tensor([sh]), "scale_w": torch.tensor([sw])})
    ref = bilinear(x[0], (dy / sh + (h - 1) / 2).expand(h, w), (dx / sw + (w - 1) / 2).expand(h, w))
    torch.testing.assert_close(out[0], ref, atol=1e-6, rtol=0)
    a = math.radians(30)
    out = DC_OPS["rotate"](x, {"angle": torch.tensor([30.0])})
    fill = x.mean()
    rows = math.sin(a) * dx + math.cos(a) * dy + (h - 1) / 2
    cols = math.cos(a) * dx - math.sin(a) * dy + (w - 1) / 2
    torch.testing.assert_close(out[0], bilinear(x[0] - fill, rows, cols) + fill, atol=1e-6, rtol=0)
    square = images((1, 8, 8), n=1)
    rot90 = DC_OPS["rotate"](square, {"angle": torch.tensor([90.0])})
    torch.testing.assert_close(
        rot90, torch.rot90(square, 1, (-2, -1)), atol=1e-6, rtol=0
    )  # counter-clockwise


def test_dc_parameter_ranges():
    shifts = draw_dc_params("crop", 4000, (3, 8, 8), gen(), "cpu")["shift_h"]
    assert shifts.min() == -4 and shifts.max() == 3  # offsets 0..7 in the 4-pixel padded canvas
    angles = draw_dc_params("rotate", 4000, (3, 8, 8), gen(), "cpu")["angle"]
    assert angles.min() == -45 and angles.max() == 44 and torch.equal(angles, angles.round())
    scales = draw_dc_params("scale", 4000, (3, 8, 8), gen(), "cpu")["scale_w"]
    assert 0.8 <= scales.min() and scales.max() <= 1.2


@pytest.mark.parametrize("strategy", ["none", "None", "", None])
def test_identity_strategies(strategy):
    x = images((3, 8, 8), n=3)
    assert torch.equal(dc_augment(x, strategy, gen()), x)
    assert torch.equal(dsa_augment(x, strategy, gen()), x)


def test_dc_aug_strategy_rules():
    assert dc_aug_strategy("MNIST", "ConvNet") == "crop_scale_rotate"
    assert dc_aug_strategy("MNIST", "ConvNetBN") == "crop_noise"  # the BN rule wins, as in get_daparam
    assert dc_aug_strategy("CIFAR10", "ResNet18BN_AP") == "crop_noise"
    assert dc_aug_strategy("CIFAR10", "VGG11BN") == "crop_noise"
    assert dc_aug_strategy("CIFAR10", "ConvNet") == "none"
    assert dc_aug_strategy("FashionMNIST", "ConvNet") == "none"


# ---------------------------------------------------------------- errors and shapes


def test_bad_names_are_user_errors():
    x = images((3, 8, 8), n=2)
    with pytest.raises(UserError, match="blur"):
        dsa_augment(x, "color_blur", gen())
    with pytest.raises(UserError, match="flip"):
        dc_augment(x, "crop_flip", gen())
    with pytest.raises(UserError, match="aug_mode"):
        dsa_augment(x, "color", gen(), params=DSAParams(aug_mode="X"))


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_and_float32(shape):
    x = images(shape, n=4, dtype=torch.float32)
    for mode in ("S", "M"):
        out = dsa_augment(x, FULL, gen(), groups=torch.tensor([0, 0, 1, 1]), params=DSAParams(aug_mode=mode))
        assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    out = dc_augment(x, "crop_scale_rotate_noise", gen())
    assert out.shape == x.shape and out.dtype == torch.float32


@pytest.mark.parametrize("mode", ["S", "M"])
def test_ensemble_augmentation_in_one_call_equals_one_call_per_member(mode):
    """K members' batches augmented together equal K separate calls, each member drawing from its own generator
    (bit for bit: every op acts per image)."""
    augment = dsa_augmenter(FULL, DSAParams(aug_mode=mode, align_corners=False))
    x = images((3, 8, 8), n=5 * 7, dtype=torch.float32).view(5, 7, 3, 8, 8)
    together = augment.members(x, [gen(s) for s in range(5)])
    alone = torch.stack([augment(x[m], gen(m)) for m in range(5)])
    assert torch.equal(together, alone)
    assert not torch.equal(together[0], together[1])


@pytest.mark.parametrize("channels", [1, 3])  # grey: our gather; colour: kornia's translate
def test_crops_equal_a_plain_gather_exactly(channels):
    x = images((channels, 32, 32), n=64, dtype=torch.float32).requires_grad_()
    shifts = {"shift_h": torch.randint(-40, 41, (64,), generator=gen(5)),
              "shift_w": torch.randint(-40, 41, (64,), generator=gen(6))}
    h = w = 32
    rows = torch.arange(h) + shifts["shift_h"].view(-1, 1)
    cols = torch.arange(w) + shifts["shift_w"].view(-1, 1)
    inside = ((rows >= 0) & (rows < h)).view(-1, 1, h, 1) & ((cols >= 0) & (cols < w)).view(-1, 1, 1, w)
    n_idx = torch.arange(64).view(-1, 1, 1)
    gathered = x.permute(0, 2, 3, 1)[n_idx, rows.clamp(0, h - 1).view(-1, h, 1), cols.clamp(0, w - 1).view(-1, 1, w)]
    gathered = gathered.permute(0, 3, 1, 2)
    weights = torch.randn(x.shape, generator=gen(7))
    ours, expected = DSA_OPS["crop"](x, shifts), torch.where(inside, gathered, torch.zeros(()))
    assert torch.equal(ours, expected)
    grad_ours, = torch.autograd.grad((ours * weights).sum(), x)
    grad_expected, = torch.autograd.grad((expected * weights).sum(), x)
    assert torch.equal(grad_ours, grad_expected)
    fill = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    torch.testing.assert_close(DC_OPS["crop"](x, shifts), torch.where(inside, gathered, fill), atol=1e-6, rtol=0)
