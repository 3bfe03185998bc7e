"""Quickstart: the whole pipeline on the bundled Digits data set, offline, in a few minutes on a CPU.

    python quickstart.py

1. trains a small pool of ConvNets        (train_original_models.py)
2. distils 10 images per class with DM    (methods/DC_DSA_DM/main_DM.py), without and with CLoM (cos, the pool)
3. validates each synthetic set and 10 random real images per class under the same evaluation
   (validate.py: same networks, seeds, epochs and DSA augmentation), and prints a table.
Everything is written under --out (a new folder per run); the commands it runs are logged, so each step
can be repeated by hand.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from utils.cli import FINITE, device_name, int_at_least, parse_flags, run_cli, seed_int
from utils.io import new_output_dir

ROOT = Path(__file__).resolve().parent


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default quickstart_runs/<time>)")
    parser.add_argument("--ipc", type=int_at_least(1), default=10)
    parser.add_argument("--pool_size", type=int_at_least(1), default=2, help="ConvNets in the CLoM pool")
    parser.add_argument("--pool_epochs", type=int_at_least(1), default=10)
    parser.add_argument("--iterations", type=int_at_least(0), default=200, help="DM iterations")
    parser.add_argument("--alpha", type=FINITE, default=10.0, help="CLoM weight")
    parser.add_argument("--num_eval", type=int_at_least(1), default=3, help="evaluation networks per set")
    parser.add_argument("--eval_epochs", type=int_at_least(1), default=150)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--gpu", default="0", type=device_name, help="CUDA card, or 'cpu'")
    return parser


def step(title: str, script: str, argv: list[str], cwd: Path) -> None:
    """Run one of the suite's scripts as its command line, in `cwd`; stop with its exit status on failure."""
    print(f"\n=== {title}\n$ python {script} {shlex.join(argv)}", flush=True)
    start = time.time()
    done = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(done.returncode)
    print(f"--- {title}: {time.time() - start:.0f} s", flush=True)


def main(argv=None) -> None:
    args = parse_flags(get_args_parser(), argv)
    out = new_output_dir(Path(args.out or Path("quickstart_runs") / time.strftime("%Y%m%d-%H%M%S")),
                         "--out").resolve()
    common = ["--dataset", "Digits", "--random_seed", str(args.seed), "--gpu", args.gpu]
    start = time.time()

    step("pool", "train_original_models.py", [
        *common, "--model", "ConvNet", "--normalize_data", "--num", str(args.pool_size), "--epochs",
        str(args.pool_epochs), "--save_every", str(args.pool_epochs), "--lr_decay_step", ""], out)
    dm = [*common, "--ipc", str(args.ipc), "--num_eval", "0", "--batch_real", "64"]
    runs = {
        "random real": [*dm, "--Iteration", "0", "--save_path", "random_real"],
        "DM": [*dm, "--Iteration", str(args.iterations), "--save_path", "dm"],
        "DM + CLoM (cos)": [
            *dm, "--Iteration", str(args.iterations), "--save_path", "dm_clom", "--CLoM", "--CLoM_distance",
            "cos", "--models_pool", "ConvNet", "--model_num", str(args.pool_size), "--epoch",
            str(args.pool_epochs), "--alphas", str(args.alpha), "--CLoM_batch_size", "0"],
    }
    rows = []
    for name, run_argv in runs.items():
        step(name, "methods/DC_DSA_DM/main_DM.py", run_argv, out)
        folder = out / run_argv[run_argv.index("--save_path") + 1]
        synthetic_set = next(folder.rglob("res_*.pt"))
        report = out / f"validate_{folder.name}.json"
        step(f"validate {name}", "validate.py", [
            *common, "--normalize_data", "--model", "ConvNet", "--dsa", "--synthesis_data_path",
            str(synthetic_set), "--epochs", str(args.eval_epochs), "--save_every", str(args.eval_epochs),
            "--lr_decay_step", str(args.eval_epochs // 2), "--num_eval", str(args.num_eval), "--result_json",
            str(report)], out)
        accs = 100 * np.asarray(json.loads(report.read_text())["final"])
        rows.append((name, accs.mean(), accs.std()))

    print(f"\nDigits, {args.ipc} images per class, ConvNet trained {args.eval_epochs} epochs with DSA, "
          f"{args.num_eval} networks each ({time.time() - start:.0f} s in all; outputs in {out})")
    print(f"{'synthetic set':18s} {'test accuracy':>16s}")
    for name, mean, std in rows:
        print(f"{name:18s} {mean:9.2f} ± {std:4.2f}%")


if __name__ == "__main__":
    sys.exit(run_cli(main))
