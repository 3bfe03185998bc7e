"""Run MTT's own scripts (github.com/GeorgeCazenavette/mtt-distillation: buffer.py, distill.py) offline, on the data
sets our benchmarks use, and keep what they learn.

MTT's code is never part of this repository and is never changed on disk: a checkout of it is passed by path, and
the process that runs one of its scripts first installs these run-time stand-ins:

- wandb (its logger, not installed here): a module that keeps the config its distill.py reads back as its
  arguments, names the run, ignores pictures and histograms, and records the time of every iteration's first
  log ("Progress") and the learned lr ("Synthetic_LR"); at wandb.finish() (the end of its main) it saves the
  final synthetic images, labels and learned lr as a result file in our format ({'data', 'syn_lr', ...}), which
  its code itself keeps only in wandb (the lr) or when an evaluation improves (the images);
- torchvision's CIFAR10 checks the files' checksums (data and batches.meta) and downloads when they differ: the
  checks are skipped, so the CIFAR-10 pickles of --data_path (e.g. the CIFAR-format Digits of dsa_fidelity.py)
  are read as CIFAR10; those pickles have bytes keys (b"data"), which torchvision's reader (str keys) does not
  find: it gets them decoded;
- the 8x8 Digits (a tensor file written by paper_code.save_tensors, already normalized): its get_dataset knows
  only CIFAR10/CIFAR100/Tiny/ImageNet, so for that data set name it returns these tensors instead;
- on a machine without CUDA, Tensor.cuda is the identity (its distill.py moves the images to CUDA before saving),
  and for its buffer.py Tensor.cpu copies a tensor that is already on the CPU: its buffer.py keeps each epoch as
  `p.detach().cpu()`, which on a CPU is a view of the live weights, so every stored epoch would be the last one.

    python benchmarks/mtt_code.py --mtt-code <checkout> [--data <tensors.pt>] [--result out.pt] [--times t.json] \\
        distill.py --dataset=CIFAR10 --data_path=<folder holding cifar-10-batches-py> ...

Its runs are not reproducible: its network builder reseeds torch from the clock; --seed seeds python, numpy and
torch once before the script starts.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def is_mtt_checkout(path: Path) -> bool:
    return all((path / name).is_file() for name in ("buffer.py", "distill.py", "reparam_module.py", "utils.py"))


class _Recorder:
    """What the wandb stand-in keeps: iteration start times and the learned lr per step."""

    def __init__(self):
        self.progress: list[tuple[int, float, float]] = []  # iteration, wall clock, process CPU time
        self.syn_lr: list[float] = []
        self.cuda_peak_bytes: int | None = None  # torch.cuda.max_memory_allocated, when on CUDA

    def log(self, values: dict, step=None) -> None:
        if "Progress" in values:
            self.progress.append((int(values["Progress"]), time.perf_counter(), time.process_time()))
            self.cuda_peak_bytes = _cuda_peak_bytes()
        if "Synthetic_LR" in values:
            self.syn_lr.append(float(values["Synthetic_LR"]))


def _cuda_peak_bytes() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def wandb_stand_in(recorder: _Recorder, result: Path | None, zca: bool) -> types.ModuleType:
    wandb = types.ModuleType("wandb")
    wandb.config = types.SimpleNamespace(_items={})
    wandb.run = types.SimpleNamespace(name="mtt_run")

    def init(config=None, **_):
        wandb.config._items = dict(vars(config)) if config is not None else {}

    def finish() -> None:
        frame = sys._getframe(1)  # MTT's main(), which calls wandb.finish() last
        found = frame.f_locals
        if result is not None and "image_syn" in found:
            import torch

            images, labels = found["image_syn"].detach().cpu(), found["label_syn"].detach().cpu()
            torch.save({"data": [[images, labels]], "syn_lr": [float(found["syn_lr"].detach())],
                        "normalized": not zca, "zca": {"eps": 0.1} if zca else None, "accs_all_exps": {},
                        "tool": "MTT's distill.py"}, result)

    wandb.init, wandb.log, wandb.finish = init, recorder.log, finish
    wandb.Histogram = wandb.Image = lambda *a, **k: None
    return wandb


def _str_keys(entry):
    if not isinstance(entry, dict):
        return entry
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def install_stand_ins(mtt: Path, script: str, data: Path | None, recorder: _Recorder, result: Path | None, zca: bool):
    """In this process: MTT's checkout first on sys.path (our own repository off it: its utils.py would clash
    with our utils package), and the stand-ins above."""
    import torch
    import torchvision

    sys.path[:] = [str(mtt)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    sys.modules["wandb"] = wandb_stand_in(recorder, result, zca)
    torchvision.datasets.CIFAR10._check_integrity = lambda self: True
    torchvision.datasets.cifar.check_integrity = lambda *a, **k: True  # batches.meta's checksum
    cifar = torchvision.datasets.cifar
    own_load = cifar.pickle.load
    cifar.pickle = types.SimpleNamespace(load=lambda f, **k: _str_keys(own_load(f, **k)))
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        if script == "buffer.py":
            own_cpu = torch.Tensor.cpu
            torch.Tensor.cpu = lambda self, *a, **k: (self.clone() if self.device.type == "cpu"
                                                      else own_cpu(self, *a, **k))
    import utils as mtt_utils  # MTT's utils.py

    if data is not None:
        content = torch.load(data, weights_only=True)
        own = mtt_utils.get_dataset

        def get_dataset(dataset, data_path, batch_size=1, subset="imagenette", args=None):
            if dataset != content["name"]:
                return own(dataset, data_path, batch_size, subset, args)
            train = mtt_utils.TensorDataset(*content["train"])
            test = mtt_utils.TensorDataset(*content["test"])
            images, num_classes = content["train"][0], content["num_classes"]
            testloader = torch.utils.data.DataLoader(test, batch_size=128, shuffle=False, num_workers=0)
            return (images.shape[1], tuple(images.shape[2:]), num_classes, [str(c) for c in range(num_classes)],
                    content["mean"], content["std"], train, test, testloader, None, {c: c for c in range(num_classes)},
                    None)

        mtt_utils.get_dataset = get_dataset
    return mtt_utils


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtt-code", required=True, type=Path, help="a checkout of MTT's repository")
    parser.add_argument("--data", type=Path, default=None, help="a paper_code.save_tensors file (e.g. 8x8 Digits)")
    parser.add_argument("--result", type=Path, default=None, help="write the final set here (distill.py)")
    parser.add_argument("--times", type=Path, default=None, help="write iteration start times here (JSON)")
    parser.add_argument("--seed", type=int, default=None, help="seed python, numpy and torch before the script")
    parser.add_argument("script", choices=("buffer.py", "distill.py"))
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="the script's flags")
    args = parser.parse_args()
    mtt = args.mtt_code.expanduser().resolve()
    if not is_mtt_checkout(mtt):
        sys.exit(f"mtt_code.py: {mtt} is not a checkout of MTT's code (buffer.py, distill.py, utils.py)")
    recorder = _Recorder()
    install_stand_ins(mtt, args.script, args.data.resolve() if args.data else None, recorder, args.result,
                      zca="--zca" in args.argv)
    if args.seed is not None:
        import random

        import numpy as np
        import torch

        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
    sys.argv = [str(mtt / args.script), *args.argv]
    try:
        runpy.run_path(str(mtt / args.script), run_name="__main__")
    finally:
        if args.times is not None:
            args.times.write_text(json.dumps({"progress": recorder.progress, "syn_lr": recorder.syn_lr,
                                              "cuda_peak_bytes": recorder.cuda_peak_bytes}))


if __name__ == "__main__":
    main()
