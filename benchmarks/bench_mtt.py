"""MTT distillation against MTT's own code, in one run: seconds per iteration and peak memory, same flags and data.

    python benchmarks/bench_mtt.py --mtt-code <mtt-distillation checkout> --out runs/bench_mtt \\
        --syn_steps 20 80 --iterations 3

Both tools distil the CIFAR-format Digits (dsa_fidelity.py: 5000 train / 1000 test, 3x32x32, read as CIFAR10) with
ConvNet, ipc 10, lr_img 1000, lr_lr 1e-05, lr_teacher 0.01, DSA, the whole synthetic set per student step, from the
same expert buffer (made once by our buffer.py: --buffer_experts x --buffer_epochs; expert_epochs 2, start epoch
0, so every iteration does the same work), with no evaluation. Each run is its own process with --threads
threads (1), one after another, or with --concurrent the tools of one syn_steps at the same time (then all see
the same background load). Seconds per iteration: the median over --iterations timed iterations after one
warm-up iteration (ours: the iteration function; MTT's: between its per-iteration "Progress" logs, through the
mtt_code.py stand-ins), as wall time and as the process's CPU time (less sensitive to other work on the machine;
the ratio column uses it). --tools: "ours" runs eagerly, "ours_compiled" with the compiled student steps (a run of
500 iterations stopped after the timed ones: a CPU compiles from 500), "mtt" is MTT's distill.py. Peak memory:
the process's peak resident set size (getrusage of the child); a run whose resident set passes --memory_cap_gb is
stopped there (its peak is then reported as more than the cap); on CUDA also torch.cuda.max_memory_allocated of
each process. The table goes to stdout and <out>/bench_mtt.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def common_flags(args, data: Path, buffers: Path, syn_steps: int, iterations: int) -> list[str]:
    return ["--dataset=CIFAR10", f"--data_path={data}", f"--model={args.model}", f"--ipc={args.ipc}",
            f"--syn_steps={syn_steps}", "--expert_epochs=2", "--max_start_epoch=1", f"--Iteration={iterations}",
            f"--eval_it={iterations + 1}", "--num_eval=0", "--lr_img=1000", "--lr_lr=1e-05", "--lr_teacher=0.01",
            f"--buffer_path={buffers}"]


def run_measured(commands: dict[str, tuple[list[str], Path]], cap_bytes: int, threads: int) -> dict[str, dict]:
    """Run the commands at once, each to its end (or until its resident set passes the cap); each one's peak RSS
    (getrusage of the child), wall time and exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start, running, measured = time.perf_counter(), {}, {}
    for name, (command, log) in commands.items():
        with open(log, "w") as out:
            running[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    capped = set()
    while running:
        for name, process in list(running.items()):
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                measured[name] = {"peak_rss_gb": usage.ru_maxrss * 1024 / 2**30, "capped": name in capped,
                                  "exit_status": os.waitstatus_to_exitcode(status),
                                  "wall_s": time.perf_counter() - start}
                del running[name]
            elif _rss_bytes(process.pid) > cap_bytes:
                capped.add(name)
                process.kill()
        time.sleep(0.2)
    return measured


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def median_gap(starts: list[float], skip: int = 1) -> float | None:
    """The median time between consecutive iteration starts, the first `skip` gaps left out (warm-up)."""
    gaps = [b - a for a, b in zip(starts, starts[1:])][skip:]
    return statistics.median(gaps) if gaps else None


def median_after_warmup(values: list[float]) -> float | None:
    return statistics.median(values[1:]) if len(values) > 1 else None


def run_ours_in_process(times_file: Path, argv: list[str]) -> None:
    """(The child process of an `ours` run.) Our distill.py with each iteration timed."""
    from methods.MTT import distill, matching_run

    wall: list[float] = []
    cpu: list[float] = []
    timed = matching_run.iteration

    def iteration(*a, **k):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = timed(*a, **k)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
        return result

    matching_run.iteration = iteration
    try:
        distill.main(argv)
    finally:
        import torch

        cuda = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
        times_file.write_text(json.dumps({"durations": wall, "cpu": cpu, "cuda_peak_bytes": cuda}))


def make_buffer(args, data: Path, buffers: Path) -> None:
    if (buffers / "CIFAR10_NO_ZCA" / args.model / "replay_buffer_0.pt").exists():
        return
    subprocess.run([sys.executable, str(ROOT / "methods/MTT/buffer.py"), "--dataset=CIFAR10", f"--data_path={data}",
                    f"--model={args.model}", f"--num_experts={args.buffer_experts}",
                    f"--train_epochs={args.buffer_epochs}", f"--buffer_path={buffers}", "--random_seed=0"],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtt-code", type=Path, default=None, help="a checkout of MTT's repository (required)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_mtt"))
    parser.add_argument("--syn_steps", type=int, nargs="+", default=[20, 80])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (after one warm-up)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--tools", nargs="+", default=["mtt", "ours", "ours_compiled"],
                        choices=["mtt", "ours", "ours_compiled"])
    parser.add_argument("--memory_cap_gb", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrent", action="store_true",
                        help="run the tools of one syn_steps at the same time (the same background load for all)")
    parser.add_argument("--buffer_experts", type=int, default=1)
    parser.add_argument("--buffer_epochs", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="only print the table of <out>/bench_mtt.json")
    parser.add_argument("--run-ours", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_ours:
        run_ours_in_process(Path(args.run_ours[0]), args.run_ours[1:])
        return
    if args.table:
        print_table(json.loads((args.out / "bench_mtt.json").read_text()), args)
        return
    if args.mtt_code is None and "mtt" in args.tools:
        parser.error("--mtt-code is required for the tool mtt")
    from dsa_fidelity import write_cifar_digits

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "cifar_digits"
    write_cifar_digits(data / "cifar-10-batches-py")
    buffers = out / "buffers"
    make_buffer(args, data, buffers)
    results_file = out / "bench_mtt.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    cap = int(args.memory_cap_gb * 2**30)
    results["context"] = measuring_context(args)
    for steps in args.syn_steps:
        commands = {}
        for tool in args.tools:
            name = f"{tool}_steps{steps}"
            times = out / f"{name}_times.json"
            times.unlink(missing_ok=True)
            shutil.rmtree(out / name, ignore_errors=True)  # this benchmark's own folder: a stopped run's checkpoint
            if tool == "mtt":
                flags = common_flags(args, data, buffers, steps, args.iterations + 1)
                command = [sys.executable, str(ROOT / "benchmarks/mtt_code.py"), "--mtt-code",
                           str(args.mtt_code.resolve()), "--seed", "0", "--times", str(times), "distill.py", *flags]
            else:
                total = 500 if tool == "ours_compiled" else args.iterations + 1
                flags = common_flags(args, data, buffers, steps, total)
                flags += ["--random_seed=0", f"--save_path={out / name}", "--checkpoint_every=100000",
                          f"--stop_after={args.iterations}", *(["--eager"] if tool == "ours" else [])]
                command = [sys.executable, str(Path(__file__).resolve()), "--run-ours", str(times), *flags]
            commands[name] = (command, out / f"{name}.log")
        batches = [commands] if args.concurrent else [{name: entry} for name, entry in commands.items()]
        for batch in batches:
            print(f"running {', '.join(batch)} ...", flush=True)
            for name, measured in run_measured(batch, cap, args.threads).items():
                times = out / f"{name}_times.json"
                timing = json.loads(times.read_text()) if times.exists() else {}
                if name.startswith("mtt"):
                    progress = timing.get("progress", [])
                    measured["s_per_iteration"] = median_gap([entry[1] for entry in progress])
                    measured["cpu_s_per_iteration"] = median_gap([entry[2] for entry in progress if len(entry) > 2])
                else:
                    measured["s_per_iteration"] = median_after_warmup(timing.get("durations", []))
                    measured["cpu_s_per_iteration"] = median_after_warmup(timing.get("cpu", []))
                measured["concurrent"] = args.concurrent
                if timing.get("cuda_peak_bytes") is not None:  # on CUDA, the device's peak is the memory that counts
                    measured["cuda_peak_gb"] = timing["cuda_peak_bytes"] / 2**30
                results[name] = measured
                results_file.write_text(json.dumps(results, indent=2))
                print(name, measured, flush=True)
    print_table(results, args)


def measuring_context(args) -> dict:
    """Where the timings are taken: the card (its wall time counts) or the CPU (its own CPU time counts)."""
    import torch

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} thread(s)",
            "torch": torch.__version__, "cuda": cuda, "memory_cap_gb": args.memory_cap_gb}


def print_table(results: dict, args) -> None:
    """The table of `results`, headed by where they were measured (a table printed on another machine says the
    measuring one's device and torch)."""
    context = {**measuring_context(args), **results.get("context", {})}
    cap = context["memory_cap_gb"]
    cuda = context["cuda"]  # then the card's time and memory count: wall time and CUDA peak; on a CPU, CPU/RSS
    basis, memory_basis = ("wall", "CUDA peak") if cuda else ("CPU", "peak RSS")
    print(f"\nCIFAR-format Digits, {args.model}, ipc {args.ipc}, {context['device']}, torch {context['torch']}")
    print(f"| syn_steps | tool | s / iteration (wall) | CPU s / iteration | peak RSS (GB) | "
          f"ours / MTT's {basis} time | ours / MTT's {memory_basis} |")
    print("|---|---|---|---|---|---|---|")
    key = "s_per_iteration" if cuda else "cpu_s_per_iteration"
    for steps in args.syn_steps:
        theirs = results.get(f"mtt_steps{steps}", {})
        for tool in args.tools:
            row = results.get(f"{tool}_steps{steps}")
            if not row:
                continue
            wall, cpu = row.get("s_per_iteration"), row.get("cpu_s_per_iteration")
            rss = f"> {cap:g} (stopped)" if row["capped"] else f"{row['peak_rss_gb']:.2f}"
            if row.get("cuda_peak_gb") is not None:
                rss += f" (CUDA peak {row['cuda_peak_gb']:.2f})"
            speed = memory = "–"
            if tool != "mtt" and theirs:
                if row.get(key) and theirs.get(key):
                    speed = f"{row[key] / theirs[key]:.2f}"
                memory_key = "cuda_peak_gb" if cuda else "peak_rss_gb"
                their_peak = cap if theirs.get("capped") else theirs[memory_key]
                memory = f"{'≤ ' if theirs.get('capped') else ''}{row[memory_key] / their_peak:.2f}"
            missing = "– (stopped)" if row["capped"] else "–"
            wall, cpu = (f"{v:.3g}" if v else missing for v in (wall, cpu))
            print(f"| {steps} | {tool} | {wall} | {cpu} | {rss} | {speed} | {memory} |")

if __name__ == "__main__":
    main()
