"""Wall-clock speed-up of the scripts under torchrun: 1 rank against N ranks, same command, same seed.

    python benchmarks/bench_distributed.py                  # CPU: gloo, threads split between ranks
    python benchmarks/bench_distributed.py --ranks 4 --gpu  # GPUs: NCCL, one card per rank
    python benchmarks/bench_distributed.py --only DM --iterations 1 --num_eval 0 --threads 1   # tiny (tests)

Runs on the bundled Digits data set, so it needs no download. Each job is a whole command (process start,
data loading and all), timed once per rank count in a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jobs(args) -> dict[str, tuple[str, list[str]]]:
    common = ["--dataset", "Digits", "--random_seed", "0", "--no_download"]
    return {
        "pool training (--num_models 4)": ("train_original_models.py", [
            *common, "--model", "ConvNet", "--num_models", "4", "--epochs", str(args.epochs), "--normalize_data"]),
        "validate (--num_eval 4)": ("validate.py", [
            *common, "--model", "ConvNet", "--synthesis_data_path", "{res}", "--epochs", str(args.epochs * 10),
            "--save_every", str(args.epochs * 10), "--num_eval", "4", "--normalize_data", "--dsa"]),
        "DM distillation (ipc 10)": ("methods/DC_DSA_DM/main_DM.py", [
            *common, "--ipc", "10", "--Iteration", str(args.iterations), "--num_eval", str(args.num_eval),
            "--epoch_eval_train", "1", "--eval_mode", "M", "--save_path", "dm_out", "--batch_real", "64"]),
        "DC distillation (ipc 2)": ("methods/DC_DSA_DM/main.py", [
            *common, "--method", "DC", "--ipc", "2", "--Iteration", "2", "--num_eval", str(args.num_eval),
            "--epoch_eval_train", "1", "--eval_mode", "M", "--save_path", "dc_out", "--batch_real", "64"]),
    }


def _make_synthetic_file(folder: Path) -> Path:
    import torch

    gen = torch.Generator().manual_seed(0)
    path = folder / "res_random.pt"
    torch.save({"data": [[torch.randn(100, 1, 8, 8, generator=gen), torch.arange(10).repeat_interleave(10)]]}, path)
    return path


def run(script: str, argv: list[str], ranks: int, use_gpu: bool, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [a.replace("{res}", str(_make_synthetic_file(Path(tmp)))) for a in argv]
        if not use_gpu:
            argv += ["--gpu", "cpu"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, threads // ranks))}
        if not use_gpu:
            env["CLOM_BACKEND"] = "gloo"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(ROOT / script), *argv]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{script} failed with {ranks} rank(s):\n{proc.stderr[-2000:]}")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="ranks to compare against 1")
    parser.add_argument("--gpu", action="store_true", help="one GPU per rank (NCCL) instead of CPU processes")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads shared by the ranks")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--only", default=None, help="run only the jobs whose name contains this text")
    parser.add_argument("--num_eval", type=int, default=1,
                        help="networks per architecture in the distillations' final evaluation (0: none)")
    args = parser.parse_args()
    print(f"{'job':34s} {'1 rank':>9s} {f'{args.ranks} ranks':>9s} {'speed-up':>9s}")
    for name, (script, argv) in _jobs(args).items():
        if args.only and args.only not in name:
            continue
        one = run(script, argv, 1, args.gpu, args.threads)
        many = run(script, argv, args.ranks, args.gpu, args.threads)
        print(f"{name:34s} {one:8.1f}s {many:8.1f}s {one / many:8.2f}×", flush=True)


if __name__ == "__main__":
    main()
