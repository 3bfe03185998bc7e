"""Time one distillation outer step (or a whole iteration): the paper's per-class loops vs ours, in one run.

One step = (DSA: Siamese augmentation +) matching loss + backward to the synthetic images, on CIFAR-shaped
random data (10 classes, 3x32x32) with a fresh ConvNet; drawing the real batch is excluded. Paths:

- loop:    the paper's algorithm — gradient_matching_loss_loop (2C autograd.grad calls), per-class DSA
           calls with a shared seed, distribution_matching_loss_loop (2C embed calls), eager inner loop.
- batched: ours, all classes in one vmap(grad) call / one embed call, eager.
- default: ours as the scripts run it on this device, in a run of the paper's length (--Iteration 1000 for
           DC/DSA, 20000 for DM; utils/runtime.py): on CUDA class-batched with the compiled real side and
           compiled inner-loop step (CUDA graphs), and DM's loss compiled; on a CPU one class at a time, each
           class's real side / DM loss compiled, and the compiled inner-loop step.

Paths alternate, the median over --repeats is printed, plus |loss difference| / |loss| between loop and default
(DSA's paths draw different augmentations, so it is left out). The first call of a compiled path compiles
(warm-up, untimed).

--scope iteration times a whole distillation iteration instead: for DC / DSA, outer_loop times (matching loss,
SGD step on the images, inner_loop epochs of training the network on the synthetic set, as in distill.py);
for DM, one matching step plus the SGD step.

    python benchmarks/bench_distill.py             # batch_real 256, 5 repeats, CPU (+ CUDA when present)
    python benchmarks/bench_distill.py --quick     # batch_real 64, 2 repeats
    python benchmarks/bench_distill.py --device cuda --cases DC1,DC10,DM50
    python benchmarks/bench_distill.py --device cuda --scope iteration --repeats 3
    python benchmarks/bench_distill.py --device cpu --cases DC1,DM10 --batch_real 2 --repeats 1 --warmup 0 \
        --length 1                                 # tiny: every path, the default one eager (tests)

Memory: the batched DC/DSA path holds about 4.5 MB per real image (12 GB at batch_real 256) on either device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.DC_DSA_DM.distribution_matching import distribution_matching_loss  # noqa: E402
from methods.DC_DSA_DM.gradient_matching import (  # noqa: E402
    MatchingExecution,
    execution_for,
    get_loops,
    gradient_matching_loss,
)
from methods.DC_DSA_DM.synset import class_labels  # noqa: E402
from methods.reference import distribution_matching_loss_loop, gradient_matching_loss_loop  # noqa: E402
from networks import build_network  # noqa: E402
from utils.augment import DEFAULT_DSA_STRATEGY, DISTILLATION_DSA, dsa_augment, dsa_augmenter, siamese_augment  # noqa: E402
from utils.engine import Schedule, TensorSource, train_models  # noqa: E402
from utils.runtime import PRECISIONS, make_runtime  # noqa: E402
from utils.seeding import make_generator  # noqa: E402

PATHS = ("loop", "batched", "default")

NUM_CLASSES, SHAPE = 10, (3, 32, 32)
CASES = {"DC1": ("DC", 1), "DC10": ("DC", 10), "DC50": ("DC", 50), "DSA10": ("DSA", 10),
         "DM10": ("DM", 10), "DM50": ("DM", 50)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, or cpu,cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--quick", action="store_true", help="batch_real 64 and 2 repeats by default")
    parser.add_argument("--batch_real", type=int, default=None, help="real images per class (default 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per path (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per path first")
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    parser.add_argument("--scope", choices=("step", "iteration"), default="step",
                        help="time one outer step (default) or one whole distillation iteration")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="as the scripts' --precision (default: the device's, utils/runtime.py)")
    parser.add_argument("--length", type=int, default=None,
                        help="iterations of the run whose default path is timed (default: the paper's, 1000 for "
                             "DC/DSA and 20000 for DM; on a CPU under 500 stays eager)")
    return parser


def dsa_loop(real, syn, generator):
    """The paper's Siamese DSA: per class, augment real and syn separately from the same seed."""
    out_real, out_syn = [], []
    seeds = torch.randint(2**31 - 1, (real.shape[0],), generator=generator).tolist()
    for c, seed in enumerate(seeds):
        out_real.append(dsa_augment(real[c], DEFAULT_DSA_STRATEGY, make_generator(seed, real.device)))
        out_syn.append(dsa_augment(syn[c], DEFAULT_DSA_STRATEGY, make_generator(seed, real.device)))
    return torch.stack(out_real), torch.stack(out_syn)


PAPER_ITERATIONS = {"DC": 1000, "DSA": 1000, "DM": 20000}  # the scripts' --Iteration defaults


def execution(path: str, runtime, method: str, length: int | None = None) -> MatchingExecution | None:
    """None for the paper's loop. length: the run's iterations (default the paper's)."""
    if path == "loop":
        return None
    if path == "batched":
        return MatchingExecution(batched=True)
    return execution_for(runtime, length or PAPER_ITERATIONS[method])


def make_step(method: str, how: MatchingExecution | None, model, real, syn, device):
    """A closure doing one outer step; returns the (detached) loss."""
    generator = make_generator(0, device)
    cpu_generator = make_generator(0)

    def step():
        syn.grad = None
        r, s = real, syn
        if method == "DM":
            loss = (distribution_matching_loss(model, r, s, how.compiled, how.batched) if how
                    else distribution_matching_loss_loop(model, r, s))
        else:
            if method == "DSA":
                r, s = (siamese_augment(r, s, DEFAULT_DSA_STRATEGY, generator) if how
                        else dsa_loop(r, s, cpu_generator))
            if how:
                loss = gradient_matching_loss(model, r, s, execution=how)
            else:
                loss = gradient_matching_loss_loop(model, r, s)
        loss.backward()
        return loss.detach()

    return step


def make_iteration(method: str, how: MatchingExecution | None, model, real, syn, device):
    """A closure doing one whole distillation iteration from the same starting images and network."""
    outer_loop, inner_loop = (1, 0) if method == "DM" else get_loops(syn.shape[1])
    step = make_step(method, how, model, real, syn, device)
    start_images, start_weights = syn.detach().clone(), {k: v.clone() for k, v in model.state_dict().items()}
    labels = class_labels(syn.shape[0], syn.shape[1], device).flatten()
    augment = dsa_augmenter(DEFAULT_DSA_STRATEGY, DISTILLATION_DSA) if method == "DSA" else None
    inner = Schedule(epochs=inner_loop, batch_size=256, lr=0.01, momentum=0.0, weight_decay=0.0, augment=augment)

    def iteration():
        with torch.no_grad():
            syn.copy_(start_images)
        model.load_state_dict(start_weights)
        optimizer = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
        total = torch.zeros((), device=device)
        for i in range(outer_loop):
            total += step()  # leaves the images' gradient in syn.grad
            optimizer.step()
            if i == outer_loop - 1:
                break
            train_models([model], TensorSource(syn.detach().flatten(0, 1), labels), inner,
                         [make_generator(i, device)], compiled=bool(how and how.compiled))
        return total

    return iteration


def timed(step, device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, loss


def run_case(name: str, runtime, batch_real: int, repeats: int, warmup: int, model_name: str,
             scope: str = "step", length: int | None = None) -> str:
    method, ipc = CASES[name]
    device = runtime.device
    torch.manual_seed(0)
    model = build_network(model_name, SHAPE[0], NUM_CLASSES, SHAPE[1:]).to(device)
    if method == "DM":
        for p in model.parameters():
            p.requires_grad_(False)
    gen = make_generator(1, device)
    real = torch.randn(NUM_CLASSES, batch_real, *SHAPE, generator=gen, device=device)
    syn = torch.randn(NUM_CLASSES, ipc, *SHAPE, generator=gen, device=device, requires_grad=True)
    make = make_step if scope == "step" else make_iteration
    steps = {path: make(method, execution(path, runtime, method, length), model, real, syn, device)
             for path in PATHS}
    times, losses = {path: [] for path in PATHS}, {}
    for i in range(warmup + repeats):
        for path, step in steps.items():  # alternate, so load changes hit every path alike
            seconds, losses[path] = timed(step, device)
            if i >= warmup:
                times[path].append(seconds)
    med = {path: statistics.median(times[path]) for path in PATHS}
    rel_diff = float((losses["default"] - losses["loop"]).abs() / losses["loop"].abs())
    diff = "-" if method == "DSA" else f"{rel_diff:.1e}"
    loop, batched, default = med["loop"], med["batched"], med["default"]
    return (f"| {method:<4}| {ipc:>3} | {device.type:<4} | {batch_real:>4} | {loop:9.4f} | {batched:9.4f} "
            f"| {default:9.4f} | {loop / batched:6.2f}x | {loop / default:6.2f}x | {diff:>8} |")


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    batch_real = args.batch_real or (64 if args.quick else 256)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.device is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [d.strip() for d in args.device.split(",") if d.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"error: unknown case(s) {unknown}; known: {', '.join(CASES)}")
    print(f"seconds per {'outer step' if args.scope == 'step' else 'distillation iteration'}; "
          f"model {args.model}, {NUM_CLASSES} classes x {'x'.join(map(str, SHAPE))}, median of {repeats} "
          f"(after {args.warmup} warm-up), torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f"; default path as in a run of {args.length} iterations" if args.length else ""))
    print("| meth| ipc | dev  | real | loop s    | batched s | default s | loop/bat | loop/def | rel.diff |")
    print("|-----|-----|------|------|-----------|-----------|-----------|----------|----------|----------|")
    for device in map(torch.device, devices):
        runtime = make_runtime(device, precision=args.precision)
        if device.type == "cuda" and torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True  # as distill.run does on CUDA
            print(f"<!-- {torch.cuda.get_device_name(device)}, cuDNN autotuning on, precision {runtime.precision} "
                  "-->")
        for name in cases:
            with runtime.autocast():  # every path under the same precision
                line = run_case(name, runtime, batch_real, repeats, args.warmup, args.model, args.scope, args.length)
            print(line, flush=True)


if __name__ == "__main__":
    main()
