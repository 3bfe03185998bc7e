"""Where one whole distillation iteration's time goes, as the script runs it (ours only).

Runs main.py / main_DM.py in this process with bench_paper.py's settings for --case (CIFAR-10-format data, the
paper's --Iteration, evaluation off), skips --warmup iterations (compiling), then profiles --iterations more:
  - Python (cProfile): milliseconds per iteration inside each stage of an iteration, cumulative;
  - the device (torch.profiler): kernel time per iteration (the GPU's busy time: wall minus this is time
    the GPU waited for the CPU), kernel launches, host-device copies and synchronisations per iteration.

    python benchmarks/profile_iteration.py --case DM50 --iterations 20 --warmup 10
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import runpy
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_paper import CASES, StopTiming  # noqa: E402
from dsa_fidelity import write_cifar_digits  # noqa: E402

from methods.DC_DSA_DM import distill  # noqa: E402

# The stages of an iteration: (label, function name as cProfile reports it)
STAGES = [("whole iteration", "method_iteration"), ("build the network", "build_seeded_network"),
          ("draw real batches", "sample_per_class"), ("DSA augmentation", "siamese_augment"),
          ("DM loss", "distribution_matching_loss"), ("DC matching loss", "gradient_matching_loss"),
          ("DC inner loop", "train_models"), ("loss check + backward + SGD", "image_step"),
          ("wait for the device (.item)", "item"), ("optimizer state copy", "deepcopy")]
ITEM = "<method 'item' of 'torch._C.TensorBase' objects>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="DM50", choices=list(CASES))
    parser.add_argument("--iterations", type=int, default=10, help="iterations profiled")
    parser.add_argument("--warmup", type=int, default=3, help="iterations before profiling (compiling)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="profile_iteration_"))
    data = write_cifar_digits(work / "cifar_digits")
    script, flags = CASES[args.case]
    if "--CLoM" in flags:
        sys.exit("profile_iteration.py: pick a case without CLoM")
    length = "20000" if script == "main_DM.py" else "1000"
    flags = [*flags, "--dataset", "CIFAR10", "--data_path", str(data), "--Iteration", length, "--num_eval", "0",
             "--save_path", str(work / "runs")]
    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    python, device = cProfile.Profile(), torch.profiler.profile(activities=activities)
    count, clock = [0], {}
    real_iteration = distill.method_iteration

    def profiled_iteration(*a, **k):
        if cuda:
            torch.cuda.synchronize()
        if count[0] == args.warmup:
            clock["start"] = time.perf_counter()
            device.__enter__()
            python.enable()
        if count[0] == args.warmup + args.iterations:
            python.disable()
            device.__exit__(None, None, None)
            clock["wall"] = time.perf_counter() - clock["start"]
            raise StopTiming
        count[0] += 1
        return real_iteration(*a, **k)

    distill.method_iteration = profiled_iteration
    main_path = ROOT / "methods/DC_DSA_DM" / script
    sys.argv = [str(main_path), *flags]
    try:
        runpy.run_path(str(main_path), run_name="__main__")
    except StopTiming:
        pass
    report(args, python, device, clock["wall"], cuda)


def report(args, python: cProfile.Profile, device, wall: float, cuda: bool) -> None:
    n = args.iterations
    stats = pstats.Stats(python).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    print(f"{args.case}: {n} iterations after {args.warmup}; wall {1e3 * wall / n:.2f} ms per iteration "
          f"(under both profilers)")
    print("| stage | ms per iteration (Python, cumulative) |\n|---|---|")
    for label, name in STAGES:
        if name == "item":
            total = sum(v[3] for (_, _, func), v in stats.items() if func == ITEM)
        else:
            total = sum(v[3] for (file, _, func), v in stats.items()
                        if func == name and (name == "deepcopy" or str(ROOT) in file))
        if total:
            print(f"| {label} | {1e3 * total / n:.2f} |")
    events = device.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events) if cuda else 0.0
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                        "cudaGraphLaunch"))
    copies = sum(e.count for e in events if e.key.startswith("cudaMemcpy"))
    syncs = sum(e.count for e in events if "Synchronize" in e.key)
    if cuda:
        print(f"device busy {kernel_us / 1e3 / n:.2f} ms per iteration ({100 * kernel_us / 1e6 / wall:.0f}% of wall); "
              f"per iteration: {launches / n:.0f} kernel launches, {copies / n:.1f} memcpy calls, "
              f"{syncs / n:.1f} synchronisations")
    print(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
