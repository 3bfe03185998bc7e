"""Time one CLoM step (forward + backward to the synthetic images): ours vs the direct formula.

Setup: |S| = 100 CIFAR-shaped synthetic images (3x32x32, 10 per class; --syn_images), a ConvNet pool model (random
weights, saved to a temporary pretrained_model tree and loaded through build_clom_loss), a random
CIFAR-shaped real set (50000 images by default), alpha = 1.

- ours:   build_clom_loss(...) once (its one-time cost, filling the real-feature cache, is printed as
          "setup"), then each step = draw + class sums + one pass over the synthetic images.
- direct: each step draws the real batch, forwards it through the pool model (cos; ce needs only its
          labels) and builds the |B| x |S| matrices (methods.clom.clom_direct) — what the paper code does.

    python benchmarks/bench_clom.py                      # sizes 1024, 8196, 50000
    python benchmarks/bench_clom.py --quick              # fewer steps; a 10000-image real set
    python benchmarks/bench_clom.py --sizes 1024,8196 --direct_max 8196 --device cuda
    python benchmarks/bench_clom.py --device cpu --real 100 --sizes 50,100 --steps 1 --syn_images 10   # tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.clom import ClomOptions, build_clom_loss  # noqa: E402
from methods.reference import clom_direct  # noqa: E402
from networks import build_network  # noqa: E402
from utils.engine import TensorSource  # noqa: E402
from utils.io import POOL_INFO_NAME, pool_checkpoint_path  # noqa: E402
from utils.pools import InputSpace, load_pool  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
NUM_CLASSES, ARCH, SOURCE, EPOCH = 10, "ConvNet", "CIFAR10", 1
REAL_FORWARD_CHUNK = 4096


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--quick", action="store_true", help="2 timed steps, a 10000-image real set by default"
    )
    parser.add_argument(
        "--sizes", default="1024,8196,50000", help="CLoM batch sizes (capped at the real set)"
    )
    parser.add_argument("--real", type=int, default=None, help="real images (default 50000; --quick 10000)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 5; --quick 2)")
    parser.add_argument(
        "--direct_max", type=int, default=None, help="skip the direct method above this batch"
    )
    parser.add_argument("--distances", default="cos,ce")
    parser.add_argument("--syn_images", type=int, default=100, help="synthetic images |S| (a multiple of 10)")
    return parser


def write_pool(root: str, device) -> None:
    torch.manual_seed(0)
    net = build_network(ARCH, 3, NUM_CLASSES, 32)
    path = pool_checkpoint_path(SOURCE, ARCH, 0, EPOCH, root)
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    info = {
        "dataset": SOURCE,
        "architecture": ARCH,
        "normalized": True,
        "mean": MEAN,
        "std": STD,
        "channel": 3,
        "im_size": [32, 32],
        "num_classes": NUM_CLASSES,
        "class_names": [str(c) for c in range(NUM_CLASSES)],
    }
    (path.parent / POOL_INFO_NAME).write_text(json.dumps(info))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, syn: torch.Tensor, steps: int, device: torch.device) -> float:
    """Median seconds of one step after one warm-up; a step over 10 s is timed once."""
    timings = []
    for i in range(steps + 1):
        syn.grad = None
        sync(device)
        start = time.perf_counter()
        step().backward()
        sync(device)
        timings.append(time.perf_counter() - start)
        if i == 0 and timings[0] > 10:
            break
    return statistics.median(timings[1:] or timings)


def direct_step(model, distance, real_images, real_labels, batch, syn, syn_labels, generator):
    """The formula as written: draw the batch, forward it (cos), build the |B| x |S| matrices."""
    n = len(real_labels)
    idx = (
        torch.arange(n, device=real_labels.device)
        if batch >= n
        else torch.randperm(n, generator=generator, device=real_labels.device)[:batch]
    )
    if distance == "ce":  # D depends on the real labels only
        return clom_direct("ce", model(syn), syn_labels, real_labels[idx])
    with torch.no_grad():
        real_features = torch.cat([model.embed(real_images[part]) for part in idx.split(REAL_FORWARD_CHUNK)])
    return clom_direct("cos", model.embed(syn), syn_labels, real_labels[idx], real_features)


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    n_real = args.real or (10000 if args.quick else 50000)
    steps = args.steps or (2 if args.quick else 5)
    sizes = sorted({min(int(s), n_real) for s in args.sizes.split(",")})
    direct_max = args.direct_max if args.direct_max is not None else max(sizes)
    gen = torch.Generator(device="cpu").manual_seed(0)
    real_images = torch.randn(n_real, 3, 32, 32, generator=gen).to(device)
    real_labels = (torch.arange(n_real) % NUM_CLASSES).to(device)
    syn = torch.randn(args.syn_images, 3, 32, 32, generator=gen).to(device).requires_grad_(True)
    syn_labels = (torch.arange(args.syn_images) % NUM_CLASSES).to(device)
    print(
        f"device {device} | threads {torch.get_num_threads()} | real {n_real} x 3x32x32 | |S| {args.syn_images} | "
        f"pool {ARCH} | timed steps {steps}"
    )

    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_pool(root, device)
        model = load_pool(SOURCE, [ARCH], 1, EPOCH, device, root)[0].members[0].model
        for distance in args.distances.split(","):
            for size in sizes:
                start = time.perf_counter()
                options = ClomOptions(distance=distance, alphas=[1.0], models_pool=[ARCH], epoch=EPOCH,
                                      source_dataset=SOURCE, batch_size=size, pool_root=root)
                real = TensorSource(real_images, real_labels, NUM_CLASSES)
                space = InputSpace(3, (32, 32), True, MEAN, STD)
                ours = build_clom_loss(options, real, space, device, seed=0)
                sync(device)
                setup = time.perf_counter() - start
                ours_s = time_steps(lambda ours=ours: ours(syn, syn_labels), syn, steps, device)
                direct_s = float("nan")
                if size <= direct_max:
                    draw = torch.Generator(device=device).manual_seed(0)
                    direct_s = time_steps(
                        lambda d=distance, b=size, g=draw: direct_step(
                            model, d, real_images, real_labels, b, syn, syn_labels, g
                        ),
                        syn,
                        steps,
                        device,
                    )
                rows.append((distance, size, setup, ours_s, direct_s))
                print(
                    f"  {distance:4s} B={size:6d}: ours {ours_s * 1e3:9.1f} ms (setup {setup:6.1f} s) | "
                    f"direct {direct_s * 1e3:9.1f} ms | {ours.describe()}",
                    flush=True,
                )
    report(rows, sizes)


def report(rows, sizes) -> None:
    print(
        f"\n{'distance':8s} {'batch':>7s} {'ours ms':>10s} {'direct ms':>10s} {'direct/ours':>12s} "
        f"{'ours setup s':>13s}"
    )
    for distance, size, setup, ours_s, direct_s in rows:
        print(
            f"{distance:8s} {size:7d} {ours_s * 1e3:10.1f} {direct_s * 1e3:10.1f} {direct_s / ours_s:11.1f}x "
            f"{setup:13.1f}"
        )
    for distance in dict.fromkeys(row[0] for row in rows):
        times = {size: (ours_s, direct_s) for d, size, _, ours_s, direct_s in rows if d == distance}
        if 8196 in times:
            print(f"{distance}: direct/ours at 8196 = {times[8196][1] / times[8196][0]:.1f}x")
        growth = times[max(sizes)][0] / times[min(sizes)][0]
        verdict = "within" if growth <= 2 else "NOT within"
        print(f"{distance}: ours {min(sizes)} -> {max(sizes)}: x{growth:.2f} ({verdict} 2x)")


if __name__ == "__main__":
    main()
