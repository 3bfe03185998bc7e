"""Evaluation of a synthetic set: N fresh ConvNets x E epochs with DSA on it, then tested — three ways, one run.

- one by one: each network trained alone, eager, one DSA call per step (the paper's evaluate_synset);
- stacked:    all N as one torch.func ensemble, one DSA call per ensemble step, eager;
- default:    what validate.py / an in-run evaluation do on this device (utils/runtime.py): on CUDA the stacked
              ensemble through the compiled step (CUDA graphs), on a CPU one by one (stacking does not pay there).

    python benchmarks/bench_eval.py --device cuda --nets 20 --epochs 300
    python benchmarks/bench_eval.py --nets 2 --epochs 20            # CPU
    python benchmarks/bench_eval.py --nets 1 --epochs 1 --ipc 1 --test_images 10   # tiny (tests)

Data: CIFAR-shaped random images (10 classes x --ipc synthetic, --test_images test, 1000 by default). Prints
seconds per path and ratios; the first (warm-up) run of each path is one epoch and untimed (compiling happens
there).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.augment import DEFAULT_DSA_STRATEGY, DISTILLATION_DSA, dsa_augmenter  # noqa: E402
from utils.engine import (  # noqa: E402
    TensorSource,
    build_seeded_network,
    evaluate_models,
    paper_eval_schedule,
    train_models,
)
from utils.runtime import PRECISIONS, make_runtime  # noqa: E402
from utils.seeding import make_generator  # noqa: E402

PATHS = {"one by one": dict(stack=False, compiled=False), "stacked": dict(stack=True, compiled=False)}


def run(path: dict, args, train, test, device, epochs: int) -> float:
    models = [build_seeded_network("ConvNet", 3, 10, (32, 32), seed, device) for seed in range(args.nets)]
    generators = [make_generator(seed, device) for seed in range(args.nets)]
    schedule = paper_eval_schedule(epochs, 0.01, 256, dsa_augmenter(DEFAULT_DSA_STRATEGY, DISTILLATION_DSA))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_models(models, train, schedule, generators, **path)
    evaluate_models(models, test)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nets", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="as validate.py's --precision")
    parser.add_argument("--test_images", type=int, default=1000, help="random test images the networks are tested on")
    args = parser.parse_args()
    device = torch.device(args.device)
    runtime = make_runtime(device, precision=args.precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)
    n = 10 * args.ipc
    train = TensorSource(torch.randn(n, 3, 32, 32, generator=gen).to(device), (torch.arange(n) % 10).to(device), 10)
    test = TensorSource(torch.randn(args.test_images, 3, 32, 32, generator=gen).to(device),
                        torch.randint(0, 10, (args.test_images,), generator=gen).to(device), 10)
    paths = {**PATHS, "default": dict(stack=None, compiled=runtime.fast)}
    seconds = {}
    for name, path in paths.items():
        with runtime.autocast():
            run(path, args, train, test, device, epochs=1)  # warm-up: allocator, cuDNN autotuning, compiling
            seconds[name] = run(path, args, train, test, device, args.epochs)
    print(f"device {device} | {args.nets} ConvNets x {args.epochs} epochs with DSA on {n} images 3x32x32, "
          f"tested on {args.test_images} | "
          f"precision {runtime.precision} | threads {torch.get_num_threads()}")
    base = seconds["one by one"]
    for name, value in seconds.items():
        print(f"| {name:11s} | {value:8.2f} s | {base / value:6.2f}x |")


if __name__ == "__main__":
    main()
