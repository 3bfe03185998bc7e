"""A sweep packed on one device against the same runs one after another, in one run of this script.

The sweep: 6 DM runs at ipc 10, three seeds x (no CLoM, CLoM cos with a 1-ConvNet pool trained first), as
the scripts run them (main_DM.py, one process each, evaluation off). Timed: the 6 runs one after another
("serial"), then K at a time on the same device for each K of --jobs ("packed"). A small run leaves a GPU idle
most of the time, so K runs share it; on a CPU the cores bound the gain. Every packed run's set is compared
with the same run's serial set (torch.equal, and the largest difference: on CUDA two runs of one seed agree
only up to rounding, docs/reliability.md).

Every run gets OMP_NUM_THREADS=--threads (default 1, as scripts/sweep_digits.sh: on a CPU a set is bit for bit
the same only with the same number of threads), so serial and packed runs compute the same sets.

    python benchmarks/bench_sweep.py --iterations 20 --jobs 2                     # Digits, a CPU
    python benchmarks/bench_sweep.py --gpu 0 --cifar --iterations 300 --jobs 2,3,6   # CIFAR-format data, a GPU
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from dsa_fidelity import write_cifar_digits  # noqa: E402

SEEDS = (0, 1, 2)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default="cpu", help="the device every run uses: cpu or a CUDA card number")
    parser.add_argument("--jobs", default="2", help="comma-separated K: runs at a time on the device")
    parser.add_argument("--iterations", type=int, default=20, help="DM iterations per run")
    parser.add_argument("--batch_real", type=int, default=32, help="real images per class per step")
    parser.add_argument("--cifar", action="store_true",
                        help="CIFAR-10-format Digits (3x32x32, benchmarks/dsa_fidelity.py) instead of Digits 8x8")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a new temporary one)")
    return parser


def sweep(args, data: list[str]) -> dict[str, list[str]]:
    """name -> main_DM.py flags (without --save_path)."""
    dataset = ["--dataset", "CIFAR10", *data] if args.cifar else ["--dataset", "Digits"]
    pool = "CIFAR10" if args.cifar else "Digits"
    clom = ["--CLoM", "--CLoM_distance", "cos", "--models_pool", "ConvNet", "--model_num", "1", "--epoch", "2",
            "--source_dataset", pool, "--alphas", "10", "--CLoM_batch_size", "0"]
    runs = {}
    for seed in SEEDS:
        common = [*dataset, "--ipc", "10", "--init", "real", "--Iteration", str(args.iterations), "--batch_real",
                  str(args.batch_real), "--num_eval", "0", "--random_seed", str(seed), "--gpu", args.gpu]
        runs[f"seed{seed}"] = common
        runs[f"seed{seed}_cos"] = [*common, *clom]
    return runs


def run_all(runs: dict[str, list[str]], folder: str, jobs: int, work: Path, env: dict) -> float:
    """Seconds to finish every run, `jobs` at a time; each writes under work/folder/<name>."""
    pending, running, start = list(runs), [], time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            log = open(work / f"{folder}_{name}.log", "w")
            argv = [sys.executable, str(ROOT / "methods/DC_DSA_DM/main_DM.py"), *runs[name], "--save_path",
                    f"{folder}/{name}"]
            running.append((name, subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT),
                            log))
        time.sleep(0.05)
        for item in [item for item in running if item[1].poll() is not None]:
            running.remove(item)
            item[2].close()
            if item[1].returncode != 0:
                sys.exit(f"bench_sweep.py: {folder}/{item[0]} failed; see {work / f'{folder}_{item[0]}.log'}")
    return time.perf_counter() - start


def the_set(work: Path, folder: str, name: str) -> torch.Tensor:
    [path] = (work / folder / name).rglob("res_*.pt")
    return torch.load(path, weights_only=True)["data"][0][0]


def main() -> int:
    args = get_args_parser().parse_args()
    ks = [int(k) for k in args.jobs.split(",")]
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    data = ["--data_path", str(write_cifar_digits(work / "cifar_digits"))] if args.cifar else []
    pool = [sys.executable, str(ROOT / "train_original_models.py"), "--dataset", "CIFAR10" if args.cifar else "Digits",
            *data, "--model", "ConvNet", "--normalize_data", "--num", "1", "--epochs", "2", "--save_every", "2",
            "--lr_decay_step", "", "--random_seed", "0", "--gpu", args.gpu]
    subprocess.run(pool, cwd=work, env=env, check=True, capture_output=True)
    runs = sweep(args, data)
    serial = run_all(runs, "serial", 1, work, env)
    device = torch.cuda.get_device_name(int(args.gpu)) if args.gpu != "cpu" else f"CPU ({os.cpu_count()} cores)"
    print(f"{len(runs)} DM runs, ipc 10, {args.iterations} iterations, batch_real {args.batch_real}, "
          f"{'CIFAR-format 3x32x32' if args.cifar else 'Digits 8x8'}, {args.threads} thread(s) each; {device}; "
          f"torch {torch.__version__}")
    print("| runs at a time | seconds | vs one after another | sets equal to the serial runs | largest difference |")
    print("|---|---|---|---|---|")
    print(f"| 1 (serial) | {serial:.1f} | 1.00x | - | - |")
    for k in ks:
        packed = run_all(runs, f"packed{k}", k, work, env)
        sets = [(the_set(work, "serial", name), the_set(work, f"packed{k}", name)) for name in runs]
        equal = sum(torch.equal(a, b) for a, b in sets)
        largest = max(float((a - b).abs().max()) for a, b in sets)
        print(f"| {k} | {packed:.1f} | {serial / packed:.2f}x | {equal}/{len(sets)} | {largest:.1e} |", flush=True)
    print(f"(work folder {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
