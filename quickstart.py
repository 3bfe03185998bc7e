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
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import train_original_models
import validate
from methods.DC_DSA_DM import main_DM
from utils.misc import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default quickstart_runs/<time>)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--pool_size", type=int, default=2, help="ConvNets in the CLoM pool")
    parser.add_argument("--pool_epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=200, help="DM iterations")
    parser.add_argument("--alpha", type=float, default=10.0, help="CLoM weight")
    parser.add_argument("--num_eval", type=int, default=3, help="evaluation networks per set")
    parser.add_argument("--eval_epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", default="0", help="CUDA card, or 'cpu'")
    return parser


def step(title: str, script, argv: list[str]):
    """Run one of the suite's scripts in-process as its command line would; stop on its error line."""
    path = Path(script.__file__).resolve().relative_to(Path(__file__).resolve().parent)
    print(f"\n=== {title}\n$ python {path} {shlex.join(argv)}", flush=True)
    start, outcome = time.time(), {}

    def call(script_argv):
        outcome["result"] = script.main(script_argv)

    code = run_cli(call, argv)
    if code != 0:
        raise SystemExit(code)
    print(f"--- {title}: {time.time() - start:.0f} s", flush=True)
    return outcome["result"]


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out or Path("quickstart_runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=False)
    os.chdir(out)  # the scripts write pretrained_model/ and condensed/ under the working folder
    common = ["--dataset", "Digits", "--random_seed", str(args.seed), "--gpu", args.gpu]
    start = time.time()

    step("pool", train_original_models, [*common, "--model", "ConvNet", "--normalize_data",
                                         "--num", str(args.pool_size), "--epochs", str(args.pool_epochs),
                                         "--save_every", str(args.pool_epochs), "--lr_decay_step", ""])
    dm = [*common, "--ipc", str(args.ipc), "--num_eval", "0", "--batch_real", "64"]
    sets = {
        "random real": step("random real", main_DM, [*dm, "--Iteration", "0", "--save_path", "random_real"]),
        "DM": step("DM", main_DM, [*dm, "--Iteration", str(args.iterations), "--save_path", "dm"]),
        "DM + CLoM (cos)": step("DM + CLoM (cos)", main_DM, [
            *dm, "--Iteration", str(args.iterations), "--save_path", "dm_clom", "--CLoM", "--CLoM_distance",
            "cos", "--models_pool", "ConvNet", "--model_num", str(args.pool_size), "--epoch",
            str(args.pool_epochs), "--alphas", str(args.alpha), "--CLoM_batch_size", "0"]),
    }
    rows = []
    for name, path in sets.items():
        result = step(f"validate {name}", validate, [
            *common, "--normalize_data", "--model", "ConvNet", "--dsa", "--synthesis_data_path", str(path),
            "--epochs", str(args.eval_epochs), "--save_every", str(args.eval_epochs),
            "--lr_decay_step", str(args.eval_epochs // 2), "--num_eval", str(args.num_eval)])
        accs = 100 * np.asarray(result.final)
        rows.append((name, accs.mean(), accs.std(), path))

    print(f"\nDigits, {args.ipc} images per class, ConvNet trained {args.eval_epochs} epochs with DSA, "
          f"{args.num_eval} networks each ({time.time() - start:.0f} s in all; outputs in {out})")
    print(f"{'synthetic set':18s} {'test accuracy':>16s}")
    for name, mean, std, _ in rows:
        print(f"{name:18s} {mean:9.2f} ± {std:4.2f}%")


if __name__ == "__main__":
    sys.exit(main())
