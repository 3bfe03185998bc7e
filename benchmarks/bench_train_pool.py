"""Pool training: N models as one stacked ensemble (torch.func + vmap) against one after another.

    python benchmarks/bench_train_pool.py                 # CPU here; --device cuda on a GPU
    python benchmarks/bench_train_pool.py --num 10 --images 2048 --epochs 2

Both paths run the same engine (utils.engine.train_models) on the same CIFAR-shaped random data with the
same seeds; only `stack` differs. Prints seconds per epoch for each and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.engine import Schedule, TensorSource, build_seeded_network, train_models  # noqa: E402
from utils.seeding import make_generator  # noqa: E402


def time_training(stack: bool, args, source, device) -> float:
    models = [build_seeded_network(args.model, 3, 10, (32, 32), seed, device) for seed in range(args.num)]
    generators = [make_generator(seed, device) for seed in range(args.num)]
    schedule = Schedule(epochs=args.epochs, batch_size=args.batch_size, lr=0.01, weight_decay=0.005)
    # one warm-up epoch (allocator, cuDNN autotune), not timed
    train_models(models, source, Schedule(1, args.batch_size, 0.01), generators, stack=stack)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_models(models, source, schedule, generators, stack=stack)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / args.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10)
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--images", type=int, default=1024, help="CIFAR-shaped random training images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)
    source = TensorSource(torch.randn(args.images, 3, 32, 32, generator=gen).to(device),
                          torch.randint(0, 10, (args.images,), generator=gen).to(device))
    alone = time_training(False, args, source, device)
    stacked = time_training(True, args, source, device)
    print(f"device {device} | {args.num}× {args.model} | {args.images} images of 3×32×32, batch {args.batch_size}")
    print(f"one by one : {alone:8.3f} s/epoch")
    print(f"ensemble   : {stacked:8.3f} s/epoch")
    print(f"speed-up   : {alone / stacked:8.2f}×")


if __name__ == "__main__":
    main()
