"""DSA fidelity (one op per class): DM ipc 10 and DSA ipc 10, several seeds, one evaluator, on Digits and on a
CIFAR-format copy of Digits; run it once with the code before a change and once after, and compare.

    python benchmarks/dsa_fidelity.py --code /path/to/old/checkout --out runs/before
    python benchmarks/dsa_fidelity.py --out runs/after                       # this checkout
    python benchmarks/dsa_fidelity.py --summarize runs/before runs/after
    python benchmarks/dsa_fidelity.py --out runs/tiny --datasets Digits --methods DM,DSA --seeds 0 \
        --dm_iterations 1 --dsa_iterations 1 --num_eval 1 --eval_epochs 2 --gpu cpu   # tiny (tests)

--code picks the checkout whose main.py / main_DM.py distil; every set is evaluated by THIS checkout's
validate.py (5 ConvNets x 300 epochs with DSA, seed 0; --num_eval, --eval_epochs), so both variants share one
evaluator.

The CIFAR-format copy ("CIFARDigits") is written as real CIFAR-10 pickles under --out: the fixed Digits split
(train 1198 / test 599) upsampled to 32x32 (bilinear), grey copied to RGB, enlarged to 5000 train / 1000 test
images by small random translations (±2 px) and rotations (±8°) of each split's own images (no image crosses
from train to test). It is read with --dataset CIFAR10 --data_path <out>/cifar_digits.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.data import load_dataset  # noqa: E402


def write_cifar_digits(folder: Path, train_size: int = 5000, test_size: int = 1000, seed: int = 0) -> Path:
    """The Digits split as CIFAR-10 pickles (data_batch_1..5, test_batch, batches.meta) in `folder`."""
    if (folder / "batches.meta").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_dataset("Digits", normalize=False)
    generator = torch.Generator().manual_seed(seed)

    def enlarge(split, size: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = split.images(), split.labels
        picks = torch.arange(size) % len(labels)  # every image, then jittered copies
        big = F.interpolate(images[picks], size=(32, 32), mode="bilinear", align_corners=False)
        jitter = torch.arange(size) >= len(labels)
        angle = (torch.rand(size, generator=generator) * 2 - 1) * math.radians(8) * jitter
        shift = (torch.rand(size, 2, generator=generator) * 2 - 1) * (2 / 16) * jitter[:, None]
        theta = torch.stack([torch.cos(angle), -torch.sin(angle), shift[:, 0],
                             torch.sin(angle), torch.cos(angle), shift[:, 1]], 1).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(big.shape), align_corners=False)
        big = F.grid_sample(big, grid, align_corners=False).clamp(0, 1)
        pixels = (big.expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)
        return pixels.reshape(size, -1).numpy(), labels[picks].numpy()

    train, test = enlarge(digits.train, train_size), enlarge(digits.test, test_size)
    per_batch = train_size // 5
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        _pickle(folder / f"data_batch_{b + 1}", {b"data": train[0][part], b"labels": train[1][part].tolist()})
    _pickle(folder / "test_batch", {b"data": test[0], b"labels": test[1].tolist()})
    _pickle(folder / "batches.meta", {b"label_names": [str(d).encode() for d in range(10)]})
    return folder


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def jobs(args) -> list[tuple[str, list[str]]]:
    data = {"Digits": ["--dataset", "Digits"],
            "CIFARDigits": ["--dataset", "CIFAR10", "--data_path", str(cifar_digits_folder(args))]}
    budget = {"DM": ["--Iteration", str(args.dm_iterations)], "DSA": ["--Iteration", str(args.dsa_iterations)]}
    out = []
    for dataset in args.datasets.split(","):
        for method in args.methods.split(","):
            for seed in args.seeds.split(","):
                script = "main_DM.py" if method == "DM" else "main.py"
                flags = [*data[dataset], "--ipc", "10", "--init", "real", "--num_eval", "0", "--random_seed", seed,
                         "--gpu", args.gpu, *budget[method], *args.distill_extra.split()]
                if method == "DSA":
                    flags += ["--method", "DSA"]
                out.append((f"{dataset}_{method}_seed{seed}", [f"methods/DC_DSA_DM/{script}", *flags]))
    return out


def cifar_digits_folder(args) -> Path:
    return (args.cifar_digits or args.out / "cifar_digits").resolve()


def run(args) -> None:
    args.out = args.out.resolve()  # the distillations run inside it: a relative --out would nest
    args.out.mkdir(parents=True, exist_ok=True)
    if "CIFARDigits" in args.datasets:
        write_cifar_digits(cifar_digits_folder(args))
    if args.prepare_only:
        return
    code = Path(args.code).resolve()
    for name, argv in jobs(args):
        report = args.out / f"{name}.json"
        if report.exists():
            continue
        start = time.time()
        subprocess.run([sys.executable, str(code / argv[0]), *argv[1:], "--save_path", str(args.out / name)],
                       check=True, cwd=args.out, stdout=subprocess.DEVNULL)
        seconds = time.time() - start
        synthetic_set = next((args.out / name).rglob("res_*.pt"))
        dataset = argv[argv.index("--dataset") + 1:argv.index("--dataset") + 2]
        data_path = argv[argv.index("--data_path"):argv.index("--data_path") + 2] if "--data_path" in argv else []
        subprocess.run([sys.executable, str(ROOT / "validate.py"), "--dataset", *dataset, *data_path, "--model",
                        "ConvNet", "--normalize_data", "--dsa", "--epochs", str(args.eval_epochs), "--save_every",
                        str(args.eval_epochs), "--lr_decay_step", str(max(1, args.eval_epochs // 2)), "--num_eval",
                        str(args.num_eval), "--random_seed", "0", "--gpu",
                        args.gpu, *(["--eager"] if args.eager_eval else []), *args.eval_extra.split(),
                        "--synthesis_data_path",
                        str(synthetic_set), "--result_json", str(args.out / f"{name}.validate.json")],
                       check=True, stdout=subprocess.DEVNULL)
        final = json.loads((args.out / f"{name}.validate.json").read_text())["final"]
        report.write_text(json.dumps({"name": name, "distill_s": round(seconds, 1), "final": final}))
        print(f"{name}: {100 * np.mean(final):.2f} ± {100 * np.std(final):.2f}% ({seconds:.0f} s)", flush=True)


def summarize(folders: list[Path]) -> None:
    """One row per (data set, method): the mean ± std over seeds of each seed's mean over evaluation nets."""
    print("| data set | method | " + " | ".join(f.name for f in folders) + " |")
    print("|---|---|" + "---|" * len(folders))
    keys = sorted({p.name.rsplit("_seed", 1)[0] for f in folders for p in f.glob("*_seed*.json")
                   if not p.name.endswith(".validate.json")})
    for key in keys:
        cells = []
        for folder in folders:
            reports = [p for p in sorted(folder.glob(f"{key}_seed*.json")) if not p.name.endswith(".validate.json")]
            per_seed = [100 * np.mean(json.loads(p.read_text())["final"]) for p in reports]
            cells.append(f"{np.mean(per_seed):.2f} ± {np.std(per_seed):.2f} (n={len(per_seed)})" if per_seed else "-")
        dataset, method = key.split("_", 1)
        print(f"| {dataset} | {method} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--code", default=str(ROOT), help="checkout whose distillation scripts run")
    parser.add_argument("--datasets", default="Digits,CIFARDigits")
    parser.add_argument("--methods", default="DM,DSA")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dm_iterations", type=int, default=500)
    parser.add_argument("--dsa_iterations", type=int, default=20)
    parser.add_argument("--num_eval", type=int, default=5)
    parser.add_argument("--eval_epochs", type=int, default=300, help="validate.py's epochs (its lr decays at half)")
    parser.add_argument("--gpu", default="0")
    parser.add_argument("--cifar_digits", type=Path, default=None,
                        help="folder of the CIFAR-format Digits copy (default <out>/cifar_digits; written if absent)")
    parser.add_argument("--prepare_only", action="store_true", help="only write the CIFAR-format copy")
    parser.add_argument("--distill_extra", default="", help="more flags for the distillation command")
    parser.add_argument("--eager_eval", action="store_true", help="validate.py --eager (no compiling)")
    parser.add_argument("--eval_extra", default="", help="more flags for validate.py (e.g. --precision bf16)")
    parser.add_argument("--summarize", type=Path, nargs="+")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
    elif args.out:
        run(args)
    else:
        parser.error("give --out (to run) or --summarize FOLDERS")


if __name__ == "__main__":
    main()
