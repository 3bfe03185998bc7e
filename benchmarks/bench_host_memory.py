"""What keeping freed host memory (utils/host_memory.py) buys on a CPU: ours with glibc malloc's default
thresholds against ours with the suite's raised ones, in one run.

Each case runs in alternating child processes (CLOM_KEEP_FREED_MEMORY=0, then =1; --rounds pairs), the same
script and flags as profile_iteration.py (CIFAR-format digits 3x32x32; DC / DM with bench_paper.py's settings,
MTT with bench_mtt.py's and --syn_steps), --length iterations (100: eager on a CPU), stopped after --warmup +
--iterations. Per timed iteration: wall and CPU seconds (median), the kernel's share of the CPU time and the
minor page faults (getrusage over the timed iterations); the peak resident memory of the whole child. The ratio
is default / kept CPU time (> 1: keeping is faster).

    python benchmarks/bench_host_memory.py --cases DC1,DM10,MTT1 --rounds 2
    python benchmarks/bench_host_memory.py --cases MTT10 --syn_steps 80 --iterations 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

SETTINGS = {"default": "0", "kept": "1"}  # label: CLOM_KEEP_FREED_MEMORY


def child(args) -> None:
    """One run of one case: each timed iteration's wall and CPU time, the page faults and kernel time over them."""
    from bench_paper import StopTiming
    from dsa_fidelity import write_cifar_digits
    from profile_iteration import MTT_CASES, matching_run, mtt_run

    shutil.rmtree(args.work / "runs", ignore_errors=True)  # the previous child's run: never resumed
    data = write_cifar_digits(args.work / "cifar_digits")
    module, attribute, run_script = (mtt_run if args.case in MTT_CASES else matching_run)(args, data, args.work)
    real, record, marks = getattr(module, attribute), {"wall": [], "cpu": []}, {}

    def timed(*a, **k):
        done = len(record["wall"])
        if done == args.warmup:
            marks["start"] = resource.getrusage(resource.RUSAGE_SELF)
        if done == args.warmup + args.iterations:
            marks["end"] = resource.getrusage(resource.RUSAGE_SELF)
            raise StopTiming
        wall, cpu = time.perf_counter(), time.process_time()
        result = real(*a, **k)
        record["wall"].append(time.perf_counter() - wall)
        record["cpu"].append(time.process_time() - cpu)
        return result

    setattr(module, attribute, timed)
    try:
        run_script()
    except StopTiming:
        pass
    start, end = marks["start"], marks["end"]
    timed_cpu = (end.ru_utime - start.ru_utime) + (end.ru_stime - start.ru_stime)
    Path(args.times).write_text(json.dumps({
        "wall_s": statistics.median(record["wall"][args.warmup:]),
        "cpu_s": statistics.median(record["cpu"][args.warmup:]),
        "kernel_share": (end.ru_stime - start.ru_stime) / timed_cpu if timed_cpu else 0.0,
        "minor_faults": (end.ru_minflt - start.ru_minflt) / args.iterations,
        "peak_rss_gb": end.ru_maxrss * 1024 / 2**30}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="DC1,DM10,MTT1", help="comma-separated, of profile_iteration.py's cases")
    parser.add_argument("--rounds", type=int, default=1, help="default/kept pairs per case (alternating)")
    parser.add_argument("--iterations", type=int, default=3, help="iterations timed per run")
    parser.add_argument("--warmup", type=int, default=1, help="iterations before the timed ones")
    parser.add_argument("--length", type=int, default=100, help="the runs' --Iteration (100: eager on a CPU)")
    parser.add_argument("--syn_steps", type=int, default=20, help="MTT cases: student steps per iteration")
    parser.add_argument("--threads", type=int, default=1, help="threads per child (OMP_NUM_THREADS)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the data, MTT's expert and the runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--times", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = (args.work or Path(tempfile.mkdtemp(prefix="bench_host_memory_"))).resolve()
    print(f"CPU, {args.threads} thread(s) per child; --length {args.length}, {args.iterations} timed iterations "
          f"after {args.warmup}; MTT syn_steps {args.syn_steps}")
    print("| case | malloc | s / iteration (wall) | CPU s / iteration | kernel share of CPU time | minor faults "
          "/ iteration | peak RSS (GB) | default / kept CPU time |\n|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        runs: dict[str, list[dict]] = {label: [] for label in SETTINGS}
        for _ in range(args.rounds):
            for label, switch in SETTINGS.items():
                times = work / f"{case}_{label}.json"
                times.unlink(missing_ok=True)
                env = {**os.environ, "CLOM_KEEP_FREED_MEMORY": switch, "OMP_NUM_THREADS": str(args.threads),
                       "TQDM_DISABLE": "1"}
                command = [sys.executable, __file__, "--child", "--case", case, "--times", str(times),
                           "--work", str(work), "--length", str(args.length), "--syn_steps", str(args.syn_steps),
                           "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode != 0 or not times.exists():
                    sys.exit(f"bench_host_memory.py: the {label} run of {case} failed:\n{done.stderr[-2000:]}")
                runs[label].append(json.loads(times.read_text()))
        cpu = {label: statistics.median(r["cpu_s"] for r in rows) for label, rows in runs.items()}
        for label, rows in runs.items():
            row = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
            ratio = f"{cpu['default'] / cpu['kept']:.2f}" if label == "kept" else "–"
            print(f"| {case} | {label} | {row['wall_s']:.3g} | {row['cpu_s']:.3g} | {100 * row['kernel_share']:.0f}% "
                  f"| {row['minor_faults']:.3g} | {row['peak_rss_gb']:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
