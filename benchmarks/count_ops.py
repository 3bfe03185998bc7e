"""Kernel count of one DC iteration: aten operations per path, counted with the torch profiler on the CPU.

On a GPU every aten operation is at least one kernel launch (~5-10 us each), so for the small steps of dataset
distillation the count is a proxy for launch-bound GPU time. Counts do not depend on the batch size, so a
small real batch keeps this quick:

    python benchmarks/count_ops.py                 # DC ipc 10, batch_real 8
    python benchmarks/count_ops.py --ipc 1 --method DSA

Paths as in bench_distill.py: the paper's per-class loop, ours class-batched (vmap), ours one class at a time.
The inner loop's training steps are counted too (eager; the compiled step replaces each with one graph replay
on CUDA, counted separately as "compiled inner step" when --compiled is given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_distill import execution, make_iteration  # noqa: E402
from networks import build_network  # noqa: E402
from utils.misc import make_generator  # noqa: E402


def count(fn) -> tuple[int, float]:
    """(aten operations, GFLOP reported by the profiler) of one call."""
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    flops = sum(e.flops or 0 for e in events)
    return len(events), flops / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="DC", choices=("DC", "DSA"))
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch_real", type=int, default=8)
    args = parser.parse_args()
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_network("ConvNet", 3, 10, (32, 32))
    gen = make_generator(1)
    real = torch.randn(10, args.batch_real, 3, 32, 32, generator=gen)
    syn = torch.randn(10, args.ipc, 3, 32, 32, generator=gen, requires_grad=True)
    print(f"{args.method} ipc {args.ipc}, one iteration, ConvNet 3x32x32, 10 classes; top-level and nested aten ops")
    for path, how in (("paper loop", "loop"), ("ours, class-batched", "batched")):
        iteration = make_iteration(args.method, execution(how, device), model, real, syn, device)
        iteration()  # warm-up
        ops, gflop = count(iteration)
        print(f"| {path:22s} | {ops:8d} aten ops | {gflop:8.2f} GFLOP counted |")


if __name__ == "__main__":
    main()
