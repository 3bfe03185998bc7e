"""Check that a code change leaves distillation bit-exact: distil DC, DSA, DM and DM + CLoM cos on Digits
with a fixed seed, then compare two such folders with torch.equal.

    python benchmarks/same_sets.py --out /tmp/before          # on the old code
    python benchmarks/same_sets.py --out /tmp/after           # on the new code
    python benchmarks/same_sets.py --compare /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--dataset", "Digits", "--random_seed", "7", "--gpu", "cpu", "--num_eval", "0", "--batch_real", "32"]
CASES = {
    "DC": ["methods/DC_DSA_DM/main.py", "--method", "DC", "--ipc", "2", "--Iteration", "3"],
    "DSA": ["methods/DC_DSA_DM/main.py", "--method", "DSA", "--ipc", "2", "--Iteration", "3"],
    "DM": ["methods/DC_DSA_DM/main_DM.py", "--ipc", "5", "--Iteration", "20"],
    "DM_CLoM_cos": ["methods/DC_DSA_DM/main_DM.py", "--ipc", "5", "--Iteration", "20", "--CLoM",
                    "--CLoM_distance", "cos", "--models_pool", "ConvNet", "--alphas", "10", "--model_num", "1",
                    "--epoch", "2", "--CLoM_batch_size", "100"],
}


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=False)
    subprocess.run([sys.executable, str(ROOT / "train_original_models.py"), "--dataset", "Digits", "--normalize_data",
                    "--epochs", "2", "--lr_decay_step", "", "--random_seed", "1", "--gpu", "cpu"],
                   cwd=out, check=True)
    for name, argv in CASES.items():
        subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:], *COMMON, "--save_path", name],
                       cwd=out, check=True)


def result_files(folder: Path) -> dict[str, Path]:
    return {name: next((folder / name).rglob("res_*.pt")) for name in CASES}


def compare(a: Path, b: Path) -> bool:
    same = True
    files_a, files_b = result_files(a), result_files(b)
    for name in CASES:
        data_a = torch.load(files_a[name], weights_only=True)["data"]
        data_b = torch.load(files_b[name], weights_only=True)["data"]
        equal = len(data_a) == len(data_b) and all(
            torch.equal(x, y) for pa, pb in zip(data_a, data_b) for x, y in zip(pa, pb))
        print(f"{name:12s} {'torch.equal' if equal else 'DIFFERENT'}")
        same &= equal
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder to distil into (must not exist)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.out:
        run(args.out)
    if args.compare:
        return 0 if compare(*args.compare) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
