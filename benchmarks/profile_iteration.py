"""Where one whole distillation iteration's time goes, as the script runs it (ours only).

Runs main.py / main_DM.py in this process with bench_paper.py's settings for --case (CIFAR-10-format data, the
paper's --Iteration unless --length, evaluation off), or for MTT1 / MTT10 methods/MTT/distill.py with
bench_mtt.py's (ConvNet, ipc 1 / 10, --syn_steps student steps, DSA, from one expert of 2 epochs made here,
--Iteration 5000 unless --length), skips --warmup iterations (compiling), then profiles --iterations more:
  - Python (cProfile): milliseconds per iteration inside each stage of an iteration, cumulative;
  - the device (torch.profiler), per iteration. On CUDA: kernel time (the GPU's busy time: wall minus this is
    time the GPU waited for the CPU), kernel launches and CUDA-graph replays, memcpy calls, synchronisations.
    On a CPU, the same host work counted as operations: aten operations that do work (leaf operations, one
    kernel launch each on a GPU), copies among them (aten::copy_), and reads of a value from the device
    (item/float/int/bool and tolist: each one a synchronisation on a GPU).

    python benchmarks/profile_iteration.py --case DM50 --iterations 20 --warmup 10
    python benchmarks/profile_iteration.py --case DC1 --length 100 --iterations 3 --warmup 1   # a CPU, eager
    python benchmarks/profile_iteration.py --case MTT10 --syn_steps 80 --iterations 5 --warmup 2

For MTT every figure is also given per student step, so that runs of different --syn_steps compare directly.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import runpy
import shutil
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
DC_STAGES = [("whole iteration", "method_iteration"), ("build the network", "build_seeded_network"),
             ("draw real batches", "sample_per_class"), ("DSA augmentation", "siamese_augment"),
             ("DM loss", "distribution_matching_loss"), ("DC matching loss", "gradient_matching_loss"),
             ("DC inner loop", "train_models"), ("loss check + backward + SGD", "image_step"),
             ("wait for the device (.item)", "item"), ("optimizer state copy", "deepcopy")]
MTT_STAGES = [("whole iteration", "iteration"), ("expert weights to the device", "flatten"),
              ("draw the student's steps", "draw_student_steps"), ("trajectory + gradients", "match_trajectory"),
              ("student batches (DSA)", "student_batch"), ("student gradient, eager", "_eager_gradient"),
              ("student gradient + HVP, eager", "_eager_hvp"), ("student steps, compiled", "call"),
              ("wait for the device (.item)", "item"), ("optimizer state copy", "deepcopy")]
MTT_CASES = {"MTT1": 1, "MTT10": 10}
ITEM = "<method 'item' of 'torch._C.TensorBase' objects>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="DM50", choices=[*CASES, *MTT_CASES])
    parser.add_argument("--iterations", type=int, default=10, help="iterations profiled")
    parser.add_argument("--warmup", type=int, default=3, help="iterations before profiling (compiling)")
    parser.add_argument("--length", type=int, default=None,
                        help="the run's --Iteration (default the paper's: 1000 for DC/DSA, 20000 for DM, MTT's 5000; "
                             "on a CPU a run of fewer than 500 stays eager)")
    parser.add_argument("--syn_steps", type=int, default=20, help="MTT: student steps per iteration")
    parser.add_argument("--data", type=Path, default=None, help="CIFAR-format data folder (default: a new one)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the data, MTT's expert and the run (default: a new temporary one); what it "
                             "holds from an earlier call is reused, the run's folder excepted")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="profile_iteration_"))
    shutil.rmtree(work / "runs", ignore_errors=True)  # this script's own run folder: never resume an old run
    data = write_cifar_digits(args.data or work / "cifar_digits")
    if args.case in MTT_CASES:
        module, attribute, run_script = mtt_run(args, data, work)
    else:
        module, attribute, run_script = matching_run(args, data, work)
    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    python, device = cProfile.Profile(), torch.profiler.profile(activities=activities)
    count, clock, reads = [0], {}, [0]
    real_iteration, real_tolist = getattr(module, attribute), torch.Tensor.tolist

    def counted_tolist(self):  # tolist reads the device without an aten operation the profiler would see
        reads[0] += 1
        return real_tolist(self)

    def profiled_iteration(*a, **k):
        # Synchronise only around the window, so that the host may run ahead of the device from one iteration
        # into the next, as in a run (the closing synchronisation is counted: 1 / --iterations per iteration).
        if cuda and count[0] in (args.warmup, args.warmup + args.iterations):
            torch.cuda.synchronize()
        if count[0] == args.warmup:
            clock["start"] = time.perf_counter()
            device.__enter__()
            python.enable()
            torch.Tensor.tolist = counted_tolist
        if count[0] == args.warmup + args.iterations:
            torch.Tensor.tolist = real_tolist
            python.disable()
            device.__exit__(None, None, None)
            clock["wall"] = time.perf_counter() - clock["start"]
            raise StopTiming
        count[0] += 1
        return real_iteration(*a, **k)

    setattr(module, attribute, profiled_iteration)
    try:
        run_script()
    except StopTiming:
        pass
    report(args, python, device, clock["wall"], cuda, reads[0])


def matching_run(args, data: Path, work: Path):
    """DC / DSA / DM: (module, name of its iteration function, what runs the script)."""
    script, flags = CASES[args.case]
    if "--CLoM" in flags:
        sys.exit("profile_iteration.py: pick a case without CLoM")
    length = str(args.length or (20000 if script == "main_DM.py" else 1000))
    flags = [*flags, "--dataset", "CIFAR10", "--data_path", str(data), "--Iteration", length, "--num_eval", "0",
             "--save_path", str(work / "runs")]
    main_path = ROOT / "methods/DC_DSA_DM" / script

    def run_script():
        sys.argv = [str(main_path), *flags]
        runpy.run_path(str(main_path), run_name="__main__")

    return distill, "method_iteration", run_script


def mtt_run(args, data: Path, work: Path):
    """MTT (imported here: a checkout from before MTT runs the other cases of this file)."""
    from bench_mtt import common_flags, make_buffer

    from methods.MTT import distill as mtt_distill
    from methods.MTT import matching_run as mtt_matching

    settings = argparse.Namespace(model="ConvNet", ipc=MTT_CASES[args.case], buffer_experts=1, buffer_epochs=2,
                                  threads=torch.get_num_threads())
    make_buffer(settings, data, work / "buffers")
    flags = common_flags(settings, data, work / "buffers", args.syn_steps, args.length or 5000)
    flags += ["--random_seed=0", f"--save_path={work / 'runs'}", "--checkpoint_every=100000"]
    return mtt_matching, "iteration", lambda: mtt_distill.main(flags)


def host_counts(events, tolist_calls: int) -> dict[str, int]:
    """CPU profile: leaf aten operations (a GPU launches a kernel for each), copies among them, and reads of a
    value from the device (each a synchronisation on a GPU)."""
    leaves = [e for e in events if e.name.startswith("aten::")
              and not any(c.name.startswith("aten::") for c in e.cpu_children)]
    reads = sum(e.name == "aten::_local_scalar_dense" for e in events) + tolist_calls
    return {"operations": len(leaves), "copies": sum(e.name == "aten::copy_" for e in leaves), "reads": reads}


def report(args, python: cProfile.Profile, device, wall: float, cuda: bool, tolist_calls: int) -> None:
    n = args.iterations
    stats = pstats.Stats(python).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    mtt = args.case in MTT_CASES
    steps = args.syn_steps if mtt else None
    case = f"{args.case}, syn_steps {steps}" if mtt else args.case
    print(f"{case}: {n} iterations after {args.warmup}; wall {1e3 * wall / n:.2f} ms per iteration "
          f"(under both profilers){per_step(1e3 * wall / n, steps, ' ms')}")
    print("| stage | ms per iteration (Python, cumulative) |" + (" ms per student step |\n|---|---|---|" if mtt else
                                                                  "\n|---|---|"))
    for label, name in MTT_STAGES if mtt else DC_STAGES:
        if name == "item":
            total = sum(v[3] for (_, _, func), v in stats.items() if func == ITEM)
        else:
            total = sum(v[3] for (file, _, func), v in stats.items()
                        if func == name and (name == "deepcopy" or str(ROOT) in file))
        if total:
            print(f"| {label} | {1e3 * total / n:.2f} |" + (f" {1e3 * total / n / steps:.3f} |" if mtt else ""))
    events = device.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events) if cuda else 0.0
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                        "cudaGraphLaunch"))
    copies = sum(e.count for e in events if e.key.startswith("cudaMemcpy"))
    syncs = sum(e.count for e in events if "Synchronize" in e.key)
    graphs = sum(e.count for e in events if e.key == "cudaGraphLaunch")
    if cuda:
        print(f"device busy {kernel_us / 1e3 / n:.2f} ms per iteration ({100 * kernel_us / 1e6 / wall:.0f}% of wall)"
              f"{per_step(kernel_us / 1e3 / n, steps, ' ms')}; per iteration: {launches / n:.0f} kernel launches "
              f"({graphs / n:.0f} of them CUDA-graph replays){per_step(launches / n, steps)}, {copies / n:.1f} "
              f"memcpy calls, {syncs / n:.1f} synchronisations{per_step(syncs / n, steps)}")
    else:
        counts = host_counts(device.events(), tolist_calls)
        print(f"per iteration (CPU: GPU launches and syncs counted as operations): {counts['operations'] / n:.0f} "
              f"aten operations{per_step(counts['operations'] / n, steps)}, {counts['copies'] / n:.1f} of them "
              f"copies, {counts['reads'] / n:.1f} reads from the device{per_step(counts['reads'] / n, steps)}")
    print(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=15))


def per_step(value: float, steps: int | None, unit: str = "") -> str:
    """` (x per student step)` for MTT, else nothing."""
    return f" ({value / steps:.3g}{unit} per student step)" if steps else ""


if __name__ == "__main__":
    main()
