"""kornia against our hand-written code, on equal inputs and equal parameters, in one run:

(a) CLoM's input mapping (utils/pools.py InputAdapter: 3->1 channels and resizing): the previous plain
    RGB mean + bilinear resize, kornia's rgb_to_grayscale + kornia's antialiased resize, and what we use now
    (kornia's rgb_to_grayscale + torch's antialiased F.interpolate);
(b) every DSA and DC augmentation op (utils/augment.py) against kornia's functional op and, where kornia
    has one, its `kornia.augmentation` module called with our parameters (params=...), as a Siamese pair
    needs: the largest difference of the outputs and the time of forward + backward.

    python benchmarks/bench_kornia.py [--device cpu|cuda] [--shape 3,32,32] [--real 256] [--ipc 10]
                                      [--classes 10] [--repeats 15]

An op is a candidate for kornia only when its outputs equal ours within --atol for equal parameters.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import kornia
import kornia.augmentation as K
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.augment import (  # noqa: E402
    DC_OPS,
    DISTILLATION_DSA,
    DSA_OPS,
    apply_dsa_op,
    draw_dc_params,
    draw_dsa_params,
)
from utils.pools import InputAdapter, InputSpace  # noqa: E402
from utils.seeding import make_generator  # noqa: E402

KT = kornia.geometry.transform


# ---------------------------------------------------------------- our hand-written versions of the ops that now
# call kornia (utils/augment.py's crops), kept here as the baseline they were chosen against
def handwritten_crop(x, p):
    """DSA crop as a gather: pad one zero pixel, read x[i + shift] with the indexes clamped into the pad."""
    _, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (torch.arange(h, device=x.device) + p["shift_h"].view(-1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device) + p["shift_w"].view(-1, 1) + 1).clamp(0, w + 1)
    return _window_gather(padded, rows, cols)


def handwritten_dc_crop(x, p):
    """DC crop as a gather, the per-channel batch mean outside."""
    _, _, h, w = x.shape
    fill = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    rows = torch.arange(h, device=x.device) + p["shift_h"].view(-1, 1)
    cols = torch.arange(w, device=x.device) + p["shift_w"].view(-1, 1)
    inside = ((rows >= 0) & (rows < h)).view(-1, 1, h, 1) & ((cols >= 0) & (cols < w)).view(-1, 1, 1, w)
    return torch.where(inside, _window_gather(x, rows.clamp(0, h - 1), cols.clamp(0, w - 1)), fill)


def _window_gather(padded, rows, cols):
    n, c = padded.shape[:2]
    h, w = rows.shape[1], cols.shape[1]
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


HANDWRITTEN = {"DSA crop": handwritten_crop, "DC crop": handwritten_dc_crop}


# ---------------------------------------------------------------- kornia versions of our ops, same parameters
def _center(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return torch.tensor([[(w - 1) / 2, (h - 1) / 2]], dtype=x.dtype, device=x.device).expand(x.shape[0], 2)


def k_color(x, p):  # kornia has no op with our saturation (channel mean) and contrast (image mean, no clipping)
    return None


def k_crop(x, p):  # integer translation, zeros outside; kornia moves content by +t, we read x[i + shift]
    t = torch.stack([-p["shift_w"], -p["shift_h"]], dim=1).to(x.dtype)
    return KT.translate(x, t, mode="nearest", padding_mode="zeros", align_corners=True)


def k_cutout(x, p):  # one box per image, zeroed: kornia's bbox_to_mask (inclusive corners)
    h, w = x.shape[-2:]
    top = (p["center_h"] - p["size_h"] // 2).clamp(0, h - 1)
    left = (p["center_w"] - p["size_w"] // 2).clamp(0, w - 1)
    bottom = (p["center_h"] - p["size_h"] // 2 + p["size_h"] - 1).clamp(0, h - 1)
    right = (p["center_w"] - p["size_w"] // 2 + p["size_w"] - 1).clamp(0, w - 1)
    boxes = torch.stack([torch.stack([left, top], 1), torch.stack([right, top], 1),
                         torch.stack([right, bottom], 1), torch.stack([left, bottom], 1)], 1).to(x.dtype)
    mask = kornia.geometry.bbox.bbox_to_mask(boxes, w, h)
    mask = mask * (p["size_h"] > 0).view(-1, 1, 1).to(x.dtype)
    return x * (1 - mask).unsqueeze(1)


def k_flip(x, p):
    return torch.where(p["flip"].view(-1, 1, 1, 1), KT.hflip(x), x)


def k_scale(x, p, align_corners):  # ours shrinks the content by s: kornia's scale factor is 1/s
    factor = torch.stack([1 / p["scale_w"], 1 / p["scale_h"]], dim=1).to(x.dtype)
    return KT.scale(x, factor, _center(x), mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def k_rotate(x, p, align_corners):  # same sense: kornia's angle in degrees
    angle = torch.rad2deg(p["angle"]).to(x.dtype)
    return KT.rotate(x, angle, _center(x), mode="bilinear", padding_mode="zeros", align_corners=align_corners)


K_DSA = {"color": k_color, "crop": k_crop, "cutout": k_cutout, "flip": k_flip, "scale": k_scale,
         "rotate": k_rotate}


def k_dc_crop(x, p):  # outside: the per-channel batch mean
    fill = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    t = torch.stack([-p["shift_w"], -p["shift_h"]], dim=1).to(x.dtype)
    return KT.translate(x - fill, t, mode="nearest", padding_mode="zeros", align_corners=True) + fill


def k_dc_scale(x, p):
    factor = torch.stack([p["scale_w"], p["scale_h"]], dim=1).to(x.dtype)
    return KT.scale(x, factor, _center(x), mode="bilinear", padding_mode="zeros", align_corners=False)


def k_dc_rotate(x, p):
    fill = x.mean(dim=(0, 2, 3)).mean()
    return KT.rotate(x - fill, p["angle"].to(x.dtype), _center(x), mode="bilinear", padding_mode="zeros",
                     align_corners=False) + fill


def k_dc_noise(x, p):  # kornia's noise is RandomGaussianNoise, which draws its own noise: nothing to compare
    return None


K_DC = {"crop": k_dc_crop, "scale": k_dc_scale, "rotate": k_dc_rotate, "noise": k_dc_noise}


# ---------------------------------------------------------------- kornia.augmentation modules with our parameters
def _affine_params(x, translations=None, scale=None, angle=None):
    n = x.shape[0]
    zeros = torch.zeros(n, dtype=x.dtype, device=x.device)
    return {"translations": translations if translations is not None else torch.zeros(n, 2, dtype=x.dtype),
            "center": _center(x).contiguous(), "scale": scale if scale is not None else torch.ones(n, 2),
            "angle": angle if angle is not None else zeros, "shear_x": zeros, "shear_y": zeros,
            "batch_prob": torch.ones(n), "forward_input_shape": torch.tensor(x.shape)}


def module_op(op: str, align_corners: bool):
    """(module, params(x, p)) or None: a kornia.augmentation module and our parameters in its format."""
    if op == "rotate":
        module = K.RandomRotation(15.0, p=1.0, align_corners=align_corners)
        return module, lambda x, p: {"degrees": torch.rad2deg(p["angle"]).to(x.dtype),
                                     "batch_prob": torch.ones(x.shape[0]),
                                     "forward_input_shape": torch.tensor(x.shape)}
    if op == "scale":
        module = K.RandomAffine(0.0, scale=(0.8, 1.2), p=1.0, align_corners=align_corners)
        return module, lambda x, p: _affine_params(
            x, scale=torch.stack([1 / p["scale_w"], 1 / p["scale_h"]], 1).to(x.dtype))
    if op == "crop":
        module = K.RandomAffine(0.0, translate=(0.125, 0.125), p=1.0, align_corners=True, resample="nearest")
        return module, lambda x, p: _affine_params(
            x, translations=torch.stack([-p["shift_w"], -p["shift_h"]], 1).to(x.dtype))
    if op == "flip":
        module = K.RandomHorizontalFlip(p=0.5)
        return module, lambda x, p: {"batch_prob": p["flip"].float(), "forward_input_shape": torch.tensor(x.shape)}
    return None


# ---------------------------------------------------------------- timing
def time_calls(fns: list, x: torch.Tensor, repeats: int) -> list[float]:
    """Median seconds of each fn(x), forward + backward (distillation differentiates through the synthetic
    side). The functions take turns, round after round, so a change of load on a shared machine hits all."""
    x = x.detach().clone().requires_grad_(True)
    times: list[list[float]] = [[] for _ in fns]
    for k in range(repeats + 2):
        for slot, fn in enumerate(fns):
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(x).sum().backward()
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            if k >= 2:  # two warm-up rounds
                times[slot].append(time.perf_counter() - start)
            x.grad = None
    return [statistics.median(t) for t in times]


def compare(name: str, ours, candidates: dict, x: torch.Tensor, repeats: int, atol: float) -> dict:
    """Our op against each kornia candidate that exists (not None) and gives our outputs within atol."""
    reference = ours(x)
    row, timed = {"op": name}, {"ours": ours}
    for label, fn in candidates.items():
        out = None if fn is None else fn(x)
        row[f"{label}_diff"] = None if out is None else float((reference - out).abs().max())
        if out is not None and row[f"{label}_diff"] <= atol:
            timed[label] = fn
    row.update(zip(timed, time_calls(list(timed.values()), x, repeats)))
    return row


def fmt_ms(seconds):
    return "–" if seconds is None else f"{1000 * seconds:.2f} ms"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="3,32,32", help="C,H,W of the images")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--real", type=int, default=256, help="real images per class (batch_real)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest difference that counts as equal (float32 images of unit scale)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = tuple(int(v) for v in args.shape.split(","))
    n = args.classes * (args.real + args.ipc)  # one Siamese call: every class's real and synthetic images
    x = torch.randn((n, *shape), generator=make_generator(0, "cpu")).to(device)
    print(f"torch {torch.__version__}, kornia {kornia.__version__}, device {device}, threads "
          f"{torch.get_num_threads()}: {n} images of {shape}, forward + backward, median of {args.repeats}")

    rows = []
    settings = DISTILLATION_DSA  # the distillation's align_corners=False
    for op in DSA_OPS:
        p = draw_dsa_params(op, n, x.shape, make_generator(1, device), device, settings)
        functional = K_DSA[op]
        if op in ("scale", "rotate"):
            functional = lambda x, p, f=functional: f(x, p, settings.align_corners)
        candidates = {"kornia": lambda x, f=functional, p=p: f(x, p)}
        found = module_op(op, settings.align_corners)
        if found is not None:
            module, to_params = found
            candidates["module"] = lambda x, m=module, t=to_params, p=p: m(x, params=t(x, p))
        ours = HANDWRITTEN.get(f"DSA {op}", lambda x, p, op=op: apply_dsa_op(op, x, p, settings))
        rows.append(compare(f"DSA {op}", lambda x, f=ours, p=p: f(x, p), candidates, x, args.repeats, args.atol))
    for op in DC_OPS:
        p = draw_dc_params(op, n, x.shape, make_generator(2, device), device)
        ours = HANDWRITTEN.get(f"DC {op}", DC_OPS[op])
        rows.append(compare(f"DC {op}", lambda x, f=ours, p=p: f(x, p),
                            {"kornia": lambda x, op=op, p=p: K_DC[op](x, p)}, x, args.repeats, args.atol))

    print("\n| op | max abs diff (functional / module) | hand-written | kornia functional | kornia.augmentation | "
          "speed-up of the best kornia |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        diffs = " / ".join("n/a" if row.get(f"{label}_diff") is None else f"{row[f'{label}_diff']:.1e}"
                           for label in ("kornia", "module") if f"{label}_diff" in row)
        best = min([row[label] for label in ("kornia", "module") if label in row], default=None)
        ratio = "–" if best is None else f"{row['ours'] / best:.2f}×"
        print(f"| {row['op']} | {diffs} | {fmt_ms(row['ours'])} | {fmt_ms(row.get('kornia'))} | "
              f"{fmt_ms(row.get('module'))} | {ratio} |")

    print("\n(a) CLoM input mapping of the synthetic images (forward + backward):")
    print("| mapping | previous: RGB mean, bilinear | kornia: rgb_to_grayscale, resize(antialias) | "
          "now: rgb_to_grayscale, F.interpolate(antialias) |")
    print("|---|---|---|---|")
    for src, dst in (((3, 32), (1, 28)), ((3, 64), (3, 32)), ((3, 224), (3, 32)), ((3, 32), (3, 224))):
        source = InputSpace(src[0], (src[1], src[1]), True, (0.5,) * src[0], (0.25,) * src[0])
        dest = InputSpace(dst[0], (dst[1], dst[1]), True, (0.5,) * dst[0], (0.25,) * dst[0])
        images = torch.randn(args.classes * args.ipc, src[0], src[1], src[1], device=device)
        adapter = InputAdapter(source, dest).to(device)
        times = time_calls([lambda x, a=adapter: mapping(a, x, "previous"),
                            lambda x, a=adapter: mapping(a, x, "kornia"), adapter], images, args.repeats)
        rows.append({"op": f"map {src}->{dst}", "previous": times[0], "kornia": times[1], "now": times[2]})
        print(f"| {src[0]}x{src[1]}x{src[1]} -> {dst[0]}x{dst[1]}x{dst[1]} | "
              + " | ".join(fmt_ms(t) for t in times) + " |")
    return rows


def mapping(adapter: InputAdapter, x: torch.Tensor, how: str) -> torch.Tensor:
    """The input mapping before kornia ('previous': the plain mean of R, G, B, bilinear resizing without
    antialias) or with kornia alone ('kornia': rgb_to_grayscale and kornia's antialiased resize)."""
    if adapter.source.normalized:
        x = x * adapter.src_std + adapter.src_mean
    if adapter.source.channel == 3 and adapter.dest.channel == 1:
        x = x.mean(dim=1, keepdim=True) if how == "previous" else kornia.color.rgb_to_grayscale(x)
    if adapter.resize and how == "previous":
        x = F.interpolate(x, size=adapter.dest.im_size, mode="bilinear", align_corners=False, antialias=False)
    elif adapter.resize:
        x = KT.resize(x, tuple(adapter.dest.im_size), interpolation="bilinear", align_corners=False, antialias=True)
    if adapter.source.channel == 1 and adapter.dest.channel == 3:
        x = x.expand(-1, 3, -1, -1)
    return (x - adapter.dst_mean) / adapter.dst_std


if __name__ == "__main__":
    main()
