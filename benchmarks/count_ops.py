"""Kernel count of one DC iteration: aten operations per path, counted with the torch profiler on the CPU.

On a GPU every aten operation is at least one kernel launch (~5-10 us each), so for the small steps of dataset
distillation the count is a proxy for launch-bound GPU time. The counts do not depend on the batch size, so a
small real batch keeps this quick. One DC ipc-10 iteration = 10 outer steps (matching loss, backward, image
step) + 9 inner loops of 50 training steps on the synthetic set; each part is counted once and multiplied.

    python benchmarks/count_ops.py                 # DC ipc 10, batch_real 8
    python benchmarks/count_ops.py --method DSA
    python benchmarks/count_ops.py --ipc 2 --batch_real 1 --model ConvNetD1   # tiny (tests)

Paths: the paper's per-class loop (2C autograd.grad calls), ours class-batched (vmap), ours one class at a time
(the CPU default). The inner step is counted eager; the compiled step replaces it on CUDA with one CUDA-graph
replay (a single launch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_distill import make_step  # noqa: E402
from methods.DC_DSA_DM.gradient_matching import MatchingExecution, get_loops  # noqa: E402
from networks import build_network  # noqa: E402
from utils.engine import Schedule, TensorSource, train_models  # noqa: E402
from utils.seeding import make_generator  # noqa: E402


def count(fn) -> int:
    """aten operations (top-level and nested) of one call."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="DC", choices=("DC", "DSA"))
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch_real", type=int, default=8)
    parser.add_argument("--model", default="ConvNet", help="the network (a smaller one counts faster)")
    args = parser.parse_args()
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_network(args.model, 3, 10, (32, 32))
    gen = make_generator(1)
    real = torch.randn(10, args.batch_real, 3, 32, 32, generator=gen)
    syn = torch.randn(10, args.ipc, 3, 32, 32, generator=gen, requires_grad=True)
    outer, inner = get_loops(args.ipc)
    labels = torch.arange(10).repeat_interleave(args.ipc)
    schedule = Schedule(epochs=1, batch_size=256, lr=0.01, momentum=0.0, weight_decay=0.0)
    inner_step = count(lambda: train_models([model], TensorSource(syn.detach().flatten(0, 1), labels, 10), schedule,
                                            [make_generator(0)]))
    print(f"{args.method} ipc {args.ipc}: {outer} outer steps + {outer - 1} x {inner} inner steps; {args.model} "
          f"3x32x32, 10 classes; aten ops, top-level and nested; one inner step: {inner_step}")
    for name, how in (("paper loop", None), ("ours, class-batched", MatchingExecution(batched=True)),
                      ("ours, one class at a time", MatchingExecution(batched=False))):
        step = make_step(args.method, how, model, real, syn, device)
        step()  # warm-up
        per_step = count(step)
        total = outer * per_step + (outer - 1) * inner * inner_step
        print(f"| {name:26s} | outer step {per_step:7d} | iteration {total:9d} |")
        if how is not None and how.batched:
            # The CUDA default replays each inner step as one CUDA graph (one launch instead of inner_step ops).
            graphed = outer * per_step + (outer - 1) * inner
            print(f"| {'  + CUDA-graph inner step':26s} | outer step {per_step:7d} | iteration {graphed:9d} |")


if __name__ == "__main__":
    main()
