"""Our scripts at two commits against each other: seconds per distillation iteration, same flags, one run.

Runs main.py / main_DM.py of --before (a checkout of an older commit, e.g. `git worktree add ../before <commit>`)
and of --after (default: this checkout) with bench_paper.py's flags for each case (CIFAR-10-format data, the
paper's --Iteration unless --length, so a CPU run of the paper's length compiles as it would; evaluation off), in
alternating processes on one device. Each process stops after --iterations iterations; the median interval
between iteration starts after --warmup (compiling) is its time, the median over --rounds the case's.

    git worktree add ../before 8a3e816
    python benchmarks/bench_checkouts.py --before ../before --cases DM10,DC1 --rounds 2
    python benchmarks/bench_checkouts.py --before ../before --digits --length 100 --iterations 20   # small, eager
"""

from __future__ import annotations

import argparse
import json
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


class StopTiming(BaseException):
    """Ends a child's run after its timed iterations (no handler of the scripts takes a BaseException)."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="root of a checkout of the older commit")
    parser.add_argument("--after", type=Path, default=HERE, help="root of the newer checkout (default: this one)")
    parser.add_argument("--cases", default="DM10,DC1", help="comma-separated cases of bench_paper.py")
    parser.add_argument("--iterations", type=int, default=7, help="iterations per process (then it stops)")
    parser.add_argument("--warmup", type=int, default=2, help="intervals left out of the median (compiling)")
    parser.add_argument("--rounds", type=int, default=1, help="before/after pairs per case (alternating)")
    parser.add_argument("--length", type=int, default=None, help="the runs' --Iteration (default: the paper's)")
    parser.add_argument("--digits", action="store_true", help="the bundled Digits (8x8) instead of CIFAR-format data")
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and the runs")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the checkout a child process runs
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--times", help=argparse.SUPPRESS)
    return parser


def flags_of(case: str, data: str, length: int | None, digits: bool) -> tuple[str, list[str]]:
    sys.path.insert(0, str(HERE / "benchmarks"))
    from bench_paper import CASES

    script, flags = CASES[case]
    length = length or (20000 if script == "main_DM.py" else 1000)
    dataset = ["--dataset", "Digits"] if digits else ["--dataset", "CIFAR10", "--data_path", data]
    return script, [*flags, *dataset, "--Iteration", str(length), "--num_eval", "0", "--save_path", "runs"]


def child(args) -> None:
    """One run of the checkout args.child, in this process: the start time of every iteration to --times."""
    script, flags = flags_of(args.case, args.data, args.length, args.digits)
    root = args.child.resolve()
    sys.path[:0] = [str(root)]
    import torch

    from methods.DC_DSA_DM import distill  # the checkout's own

    if "--CLoM" in flags:
        from networks import build_network

        path = Path("pretrained_model/CIFAR100/original/ConvNet/index_0/CIFAR100_ConvNet_original_epoch150.pth")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(build_network("ConvNet", 3, 100, (32, 32)).state_dict(), path)
    starts: list[float] = []
    real_iteration = distill.method_iteration

    def timed(*a, **k):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        starts.append(time.perf_counter())
        if len(starts) > args.iterations:
            raise StopTiming
        return real_iteration(*a, **k)

    distill.method_iteration = timed
    main_path = root / "methods/DC_DSA_DM" / script
    sys.argv = [str(main_path), *flags]
    try:
        runpy.run_path(str(main_path), run_name="__main__")
    except StopTiming:
        pass
    Path(args.times).write_text(json.dumps(starts))


def run_child(args, root: Path, case: str, data: Path, folder: Path) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    times = folder / "times.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--before", str(args.before), "--child", str(root),
               "--case", case, "--data", str(data), "--times", str(times), "--iterations", str(args.iterations),
               *(["--length", str(args.length)] if args.length else []), *(["--digits"] if args.digits else [])]
    with open(folder / "log.txt", "w") as log:
        done = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"bench_checkouts.py: the run of {case} at {root} failed; see {folder / 'log.txt'}")
    starts = json.loads(times.read_text())
    return statistics.median([b - a for a, b in zip(starts, starts[1:])][args.warmup:])


def main() -> int:
    args = get_args_parser().parse_args()
    if args.child:
        child(args)
        return 0
    if args.digits and any("+" in case for case in args.cases.split(",")):
        sys.exit("bench_checkouts.py: the CLoM cases need the CIFAR-format data (their pool is a CIFAR-100 ConvNet)")
    if args.iterations < args.warmup + 2:
        sys.exit("bench_checkouts.py: --iterations must be at least --warmup + 2")
    sys.path.insert(0, str(HERE / "benchmarks"))
    from dsa_fidelity import write_cifar_digits

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_checkouts_"))
    data = "" if args.digits else write_cifar_digits(work / "cifar_digits")
    import torch

    commits = {}
    for name, root in (("before", args.before), ("after", args.after)):
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        commits[name] = rev.stdout.strip() or "?"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; torch {torch.__version__}; before {commits['before']}, after {commits['after']} (+ "
          f"its uncommitted changes); {'Digits' if args.digits else 'CIFAR-format data'}; {args.iterations} iterations "
          f"per run, median after {args.warmup}")
    print("| case | before s/it | after s/it | before / after |\n|---|---|---|---|")
    for case in args.cases.split(","):
        times: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for name, root in (("before", args.before), ("after", args.after)):
                times[name].append(run_child(args, root.resolve(), case, data, work / f"{case}_{name}_{r}"))
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        print(f"| {case} | {b:.3f} | {a:.3f} | {b / a:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
