"""Check that a code change leaves distillation bit-exact: distil DC, DSA, DM and DM + CLoM cos on Digits
with a fixed seed, then compare two such folders with torch.equal.

    python benchmarks/same_sets.py --out /tmp/before          # on the old code
    python benchmarks/same_sets.py --out /tmp/after           # on the new code
    python benchmarks/same_sets.py --compare /tmp/before /tmp/after
    python benchmarks/same_sets.py --cases DM --out /tmp/a && \
        python benchmarks/same_sets.py --cases DM --out /tmp/b --compare /tmp/a /tmp/b   # tiny (tests)

--cases picks some of DC, DSA, DM, DM_CLoM_cos (default all; the pool is trained only for DM_CLoM_cos).
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


def run(out: Path, cases: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=False)
    if "DM_CLoM_cos" in cases:  # its pool
        subprocess.run([sys.executable, str(ROOT / "train_original_models.py"), "--dataset", "Digits",
                        "--normalize_data", "--epochs", "2", "--lr_decay_step", "", "--random_seed", "1", "--gpu",
                        "cpu"], cwd=out, check=True)
    for name in cases:
        argv = CASES[name]
        subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:], *COMMON, "--save_path", name],
                       cwd=out, check=True)


def result_files(folder: Path, cases: list[str]) -> dict[str, Path]:
    files = {name: next((folder / name).rglob("res_*.pt"), None) for name in cases}
    missing = [name for name, path in files.items() if path is None]
    if missing:
        raise SystemExit(f"error: no result of {', '.join(missing)} under {folder}")
    return files


def compare(a: Path, b: Path, cases: list[str]) -> bool:
    same = True
    files_a, files_b = result_files(a, cases), result_files(b, cases)
    for name in cases:
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
    parser.add_argument("--cases", default=",".join(CASES), help=f"some of {','.join(CASES)}")
    args = parser.parse_args()
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = [case for case in cases if case not in CASES]
    if unknown or not cases:
        parser.error(f"--cases takes some of {', '.join(CASES)}, got {args.cases!r}")
    if args.out:
        run(args.out, cases)
    if args.compare:
        return 0 if compare(*args.compare, cases) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
