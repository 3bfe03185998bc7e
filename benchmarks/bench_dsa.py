"""Cost of one Siamese DSA call of a distillation step: one op per class (ours, as the paper draws it) against
one op per call (our previous behaviour) and the paper's loop of 2C DiffAugment calls, in one run.

    python benchmarks/bench_dsa.py [--device cuda] [--ipc 10] [--batch_real 256] [--shape 3,32,32]

All three augment real (C, batch_real, ...) and synthetic (C, ipc, ...) images with the default strategy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.augment import (  # noqa: E402
    DEFAULT_DSA_STRATEGY,
    DISTILLATION_DSA,
    apply_dsa_op,
    draw_dsa_params,
    dsa_augment,
    gather_params,
    siamese_augment,
)
from utils.seeding import make_generator  # noqa: E402


def one_op_per_call(real, syn, generator):
    """The previous behaviour: one op drawn per call, applied to every class with per-class parameters."""
    num_classes, n = real.shape[:2]
    both = torch.cat([real, syn], dim=1)
    groups = torch.arange(num_classes, device=real.device).repeat_interleave(both.shape[1])
    ops = DEFAULT_DSA_STRATEGY.split("_")
    op = ops[int(torch.randint(len(ops), (1,), generator=generator, device=real.device).item())]
    params = gather_params(draw_dsa_params(op, num_classes, real.shape, generator, real.device, DISTILLATION_DSA),
                           groups)
    out = apply_dsa_op(op, both.flatten(0, 1), params, DISTILLATION_DSA).reshape(both.shape)
    return out[:, :n], out[:, n:]


def paper_loop(real, syn, generator):
    """The paper: per class, DiffAugment(real_c) and DiffAugment(syn_c) with one shared seed."""
    outs_real, outs_syn = [], []
    for c in range(real.shape[0]):
        seed = int(torch.randint(2**31, (1,), generator=generator, device=real.device).item())
        outs_real.append(dsa_augment(real[c], DEFAULT_DSA_STRATEGY, make_generator(seed, real.device),
                                     groups=torch.zeros(real.shape[1], dtype=torch.long, device=real.device),
                                     params=DISTILLATION_DSA, num_groups=1))
        outs_syn.append(dsa_augment(syn[c], DEFAULT_DSA_STRATEGY, make_generator(seed, real.device),
                                    groups=torch.zeros(syn.shape[1], dtype=torch.long, device=real.device),
                                    params=DISTILLATION_DSA, num_groups=1))
    return torch.stack(outs_real), torch.stack(outs_syn)


def per_class_op(real, syn, generator):
    return siamese_augment(real, syn, DEFAULT_DSA_STRATEGY, generator)


def time_calls(fn, real, syn, device, repeats: int) -> float:
    generator = make_generator(0, device)
    for _ in range(3):
        fn(real, syn, generator)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out_real, out_syn = fn(real, syn, generator)
        (out_real.sum() + out_syn.sum()).backward()  # the step differentiates through the synthetic side
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        syn.grad = None
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch_real", type=int, default=256)
    parser.add_argument("--shape", default="3,32,32")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = tuple(int(s) for s in args.shape.split(","))
    g = make_generator(1, device)
    real = torch.randn(args.classes, args.batch_real, *shape, generator=g, device=device)
    syn = torch.randn(args.classes, args.ipc, *shape, generator=g, device=device, requires_grad=True)
    print(f"device {device} | threads {torch.get_num_threads()} | real {args.classes} x {args.batch_real} | "
          f"syn {args.classes} x {args.ipc} | image {shape} | median of {args.repeats}, forward + backward")
    base = time_calls(one_op_per_call, real, syn, device, args.repeats)
    ours = time_calls(per_class_op, real, syn, device, args.repeats)
    loop = time_calls(paper_loop, real, syn, device, args.repeats)
    print(f"{'one op per call (previous)':30s} {1e3 * base:8.2f} ms")
    print(f"{'one op per class (ours)':30s} {1e3 * ours:8.2f} ms   {ours / base:.2f}x the previous time")
    print(f"{'paper loop, 2C calls':30s} {1e3 * loop:8.2f} ms   ours is {loop / ours:.2f}x faster")


if __name__ == "__main__":
    main()
