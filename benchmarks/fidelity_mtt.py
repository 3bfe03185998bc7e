"""MTT's fidelity side by side: MTT's own code and this suite distil the same cells with the same flags and budget,
each from experts made by its own buffer.py with the same settings, and ONE evaluator (this suite's validate.py,
with each set's learned lr) scores every set, against random real images (IOR); CLoM cells beside them.

    python benchmarks/fidelity_mtt.py --mtt-code <mtt-distillation checkout> --out runs/fidelity_mtt      # Digits
    python benchmarks/fidelity_mtt.py --mtt-code ... --out runs/fidelity_mtt --datasets CIFARDigits
    python benchmarks/fidelity_mtt.py --summarize runs/fidelity_mtt

Data (--datasets): Digits (scikit-learn's 8x8 digits, our fixed split, 1198 train / 599 test; MTT's code gets the
same normalized tensors through mtt_code.py's stand-in) and CIFARDigits (dsa_fidelity.py's CIFAR-10-format copy,
3x32x32, 5000 / 1000, read as CIFAR10 by both tools, ZCA-whitened as MTT's CIFAR recipe).
Experts (--experts x --expert_train_epochs, batch --expert_batch, lr 0.01, DSA): by default (--buffers shared)
one buffer by our buffer.py that both tools distil from (MTT's distill.py reads our files: the distillations are
compared on the same experts); --buffers own gives MTT's distill.py the buffer of MTT's buffer.py, same settings.
Cells (--cells): MTT<ipc> for each --ipcs, by MTT's code ("mtt") and ours ("ours"), and ours with CLoM, the
experts as the pool (their last epoch, all real images): "+cos" (--CLoM_distance cos) and "+ce_plain". Budget:
--iterations image updates per run (MTT's loop updates once more than its --Iteration says, so it gets N - 1),
--syn_steps, --expert_epochs, --max_start_epoch, lr_img 1000, --lr_lr, lr_teacher 0.01. Every run is one process
with one thread, --jobs at a time. MTT's code cannot be seeded (its network builder reseeds from the clock): its
"seeds" are independent repeats; ours are --random_seed.

Evaluation: validate.py --dsa with the set's learned lr, --num_eval networks x --eval_epochs (lr x0.1 at half),
evaluation seed 0 for every set (the same initial networks), the final epoch's accuracy; --random_real 1: one
random real subset with the cell's images per class, the same evaluation; IOR = acc(set) - acc(random real).
Outputs under --out: one folder per run with its result file and validate report (summarize.py reads them too),
and the table (--summarize).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from fidelity_paper import add_eager_flag, eager  # noqa: E402

DATASETS = {"Digits": {"dataset": "Digits", "zca": False}, "CIFARDigits": {"dataset": "CIFAR10", "zca": True}}
CLOM = {"cos": ["--CLoM", "--CLoM_distance", "cos"], "ce_plain": ["--CLoM", "--CLoM_distance", "ce_plain"]}


def data_flags(args, name: str) -> list[str]:
    if name == "Digits":
        return ["--dataset=Digits"]
    return ["--dataset=CIFAR10", f"--data_path={args.out.resolve() / 'cifar_digits'}", "--zca"]


def buffer_jobs(args, name: str) -> list[tuple[str, list[str], Path]]:
    flags = [*data_flags(args, name), f"--model={args.model}", f"--num_experts={args.experts}",
             f"--train_epochs={args.expert_train_epochs}", f"--batch_train={args.expert_batch}",
             f"--save_interval={args.experts}"]
    out = args.out.resolve()
    ours = [sys.executable, str(ROOT / "methods/MTT/buffer.py"), *flags, f"--buffer_path={out / 'buffers_ours'}",
            "--random_seed=0", "--resume", *eager(args)]
    jobs = [(f"{name}_buffer_ours", ours, out / f"{name}_buffer_ours.log")]
    if args.buffers == "own":
        theirs = [sys.executable, str(ROOT / "benchmarks/mtt_code.py"), "--mtt-code", str(args.mtt_code.resolve()),
                  "--seed", "0", *(["--data", str(digits_tensors(args))] if name == "Digits" else []), "buffer.py",
                  *flags, f"--buffer_path={out / 'buffers_mtt'}"]
        jobs.append((f"{name}_buffer_mtt", theirs, out / f"{name}_buffer_mtt.log"))
    return jobs


def digits_tensors(args) -> Path:
    return args.out.resolve() / "digits_tensors.pt"


def distill_flags(args, name: str, ipc: int, updates: int) -> list[str]:
    return [*data_flags(args, name), f"--model={args.model}", f"--ipc={ipc}", f"--syn_steps={args.syn_steps}",
            f"--expert_epochs={args.expert_epochs}", f"--max_start_epoch={args.max_start_epoch}",
            f"--Iteration={updates}", f"--eval_it={updates + 1}", "--num_eval=0", "--lr_img=1000",
            f"--lr_lr={args.lr_lr}", "--lr_teacher=0.01"]


def run_jobs(args, name: str) -> list[tuple[str, list[str], Path, Path]]:
    """(run name, distill command, run folder, result file) of every cell and seed."""
    out, jobs = args.out.resolve(), []
    theirs = "mtt" if args.buffers == "own" else "ours"  # whose buffer MTT's distill.py reads
    for ipc in args.ipcs:
        for cell in args.cells:
            tool, _, distance = cell.partition("+")
            for seed in args.seeds:
                run = f"{name}_MTT{ipc}_{cell}_seed{seed}"
                folder = out / run
                dataset = DATASETS[name]["dataset"]
                result = folder / f"res_MTT_{dataset}_{args.model}_{ipc}ipc.pt" if tool == "mtt" else None
                if tool == "mtt":
                    flags = distill_flags(args, name, ipc, args.iterations - 1)
                    command = [sys.executable, str(ROOT / "benchmarks/mtt_code.py"), "--mtt-code",
                               str(args.mtt_code.resolve()), "--seed", str(seed), "--result", str(result),
                               *(["--data", str(digits_tensors(args))] if name == "Digits" else []), "distill.py",
                               *flags, f"--buffer_path={out / f'buffers_{theirs}'}"]
                else:
                    flags = distill_flags(args, name, ipc, args.iterations)
                    clom = [*CLOM[distance], "--CLoM_experts", str(args.experts), "--alphas",
                            str(args.alphas[distance]), "--CLoM_batch_size", "0"] if distance else []
                    command = [sys.executable, str(ROOT / "methods/MTT/distill.py"), *flags,
                               f"--buffer_path={out / 'buffers_ours'}", f"--random_seed={seed}",
                               f"--save_path={folder}", "--resume", *clom, *eager(args)]  # a stopped run continues
                jobs.append((run, command, folder, result))
    return jobs


def validate_command(args, name: str, result: Path, report: Path) -> list[str]:
    dataset = ["--dataset=Digits"] if name == "Digits" else ["--dataset=CIFAR10",
                                                             f"--data_path={args.out.resolve() / 'cifar_digits'}"]
    return [sys.executable, str(ROOT / "validate.py"), *dataset, f"--model={args.model}", "--normalize_data", "--dsa",
            f"--synthesis_data_path={result}", f"--epochs={args.eval_epochs}",
            f"--lr_decay_step={args.eval_epochs // 2}", f"--num_eval={args.num_eval}", "--random_seed=0",
            "--random_real=1", f"--result_json={report}", *eager(args)]


def call(command: list[str], log: Path, cwd: Path | None = None) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    (cwd or log.parent).mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd or log.parent)
    return done.returncode


def one_run(args, name: str, run: str, command: list[str], folder: Path, result: Path | None) -> str:
    report = folder / f"validate_{args.model}.json"
    if report.exists():
        return f"{run}: done before"
    folder.mkdir(parents=True, exist_ok=True)
    found = result if result is not None else next(folder.rglob("res_*.pt"), None)
    if found is None or not found.exists():
        if call(command, args.out.resolve() / f"{run}.log", cwd=folder) != 0:
            return f"{run}: distillation failed (see {run}.log)"
        found = result if result is not None else next(folder.rglob("res_*.pt"), None)
    if found is None or not found.exists():
        return f"{run}: no result file"
    if call(validate_command(args, name, found, report), args.out.resolve() / f"{run}.log", cwd=folder) != 0:
        return f"{run}: validation failed (see {run}.log)"
    return f"{run}: {100 * np.mean(json.loads(report.read_text())['final']):.2f}"


def prepare(args) -> None:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if "Digits" in args.datasets and not digits_tensors(args).exists():
        from paper_code import save_tensors

        from utils.data import load_dataset

        digits = load_dataset("Digits", normalize=True)
        save_tensors(digits_tensors(args), "Digits", digits.train, digits.test)
    if "CIFARDigits" in args.datasets:
        from dsa_fidelity import write_cifar_digits

        write_cifar_digits(out / "cifar_digits" / "cifar-10-batches-py")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtt-code", type=Path, default=None, help="a checkout of MTT's repository")
    parser.add_argument("--out", type=Path, default=Path("runs/fidelity_mtt"))
    parser.add_argument("--datasets", nargs="+", default=["Digits"], choices=list(DATASETS))
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--cells", nargs="+", default=["mtt", "ours", "ours+cos", "ours+ce_plain"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--experts", type=int, default=10)
    parser.add_argument("--expert_train_epochs", type=int, default=15)
    parser.add_argument("--expert_batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=100, help="image updates per run")
    parser.add_argument("--syn_steps", type=int, default=15)
    parser.add_argument("--expert_epochs", type=int, default=2)
    parser.add_argument("--max_start_epoch", type=int, default=10)
    parser.add_argument("--lr_lr", type=float, default=1e-06)
    parser.add_argument("--alpha_cos", type=float, default=10.0)
    parser.add_argument("--alpha_ce_plain", type=float, default=0.5)
    parser.add_argument("--eval_epochs", type=int, default=300)
    parser.add_argument("--num_eval", type=int, default=3)
    parser.add_argument("--buffers", choices=("shared", "own"), default="shared",
                        help="shared: both tools distil from the experts of our buffer.py (the distillations compared "
                        "on the same experts); own: each tool from its own buffer.py's")
    parser.add_argument("--jobs", type=int, default=1)
    add_eager_flag(parser, "buffer, distillations, validate.py")
    parser.add_argument("--summarize", nargs="+", type=Path, default=None, metavar="OUT")
    args = parser.parse_args(argv)
    if args.summarize:
        print_table(args.summarize)
        return
    if args.mtt_code is None and ("mtt" in args.cells or args.buffers == "own"):
        parser.error("--mtt-code is required for the cell mtt and for --buffers own")
    args.alphas = {"cos": args.alpha_cos, "ce_plain": args.alpha_ce_plain}
    prepare(args)
    for name in args.datasets:
        for job, command, log in buffer_jobs(args, name):
            tool = "ours" if job.endswith("ours") else "mtt"
            kind = "CIFAR10" if name == "CIFARDigits" else "Digits"
            made = args.out.resolve() / f"buffers_{tool}" / kind / args.model / "replay_buffer_0.pt"
            if not made.exists():
                print(f"{job} ...", flush=True)
                if call(command, log, cwd=args.out.resolve()) != 0:
                    sys.exit(f"{job} failed: see {log}")
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda job, name=name: one_run(args, name, *job), run_jobs(args, name)):
                print(line, flush=True)
    print_table([args.out])


def print_table(outs: list[Path]) -> None:
    rows: dict[tuple[str, str, str], list[dict]] = {}
    for out in outs:
        for report in sorted(Path(out).glob("*_seed*/validate_*.json")):
            name, cell, rest = report.parent.name.split("_", 2)
            tool = rest.rsplit("_seed", 1)[0]
            rows.setdefault((name, cell, tool), []).append(json.loads(report.read_text()))
    print("| data | cell | tool | runs | acc (%) mean ± std over runs | IOR (points) | learned lr (mean) |")
    print("|---|---|---|---|---|---|---|")
    for (name, cell, tool), reports in sorted(rows.items()):
        accs = [100 * np.mean(r["final"]) for r in reports]
        ior = [100 * r["ior"]["mean"] for r in reports if "ior" in r]
        lrs = [r["lr"] for r in reports]
        print(f"| {name} | {cell} | {tool} | {len(reports)} | {np.mean(accs):.2f} ± {np.std(accs):.2f} | "
              f"{np.mean(ior):+.2f} | {np.mean(lrs):.4g} |")


if __name__ == "__main__":
    main()
