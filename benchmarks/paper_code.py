"""Run the paper's own scripts (github.com/yaolu-zjut/DDInterpreter) offline, on the data sets our benchmarks use.

The paper's code is never part of this repository and is never changed on disk: a checkout of it is passed by
path, and the process that runs one of its scripts first installs these run-time stand-ins:

- its loaders (methods/DC_DSA_DM/utils.get_dataset, utils_clom.Dataloader.get_dataset) insist on downloading
  and on the real files' checksums, so they return the tensors of our data instead: CIFAR-10 pickles (e.g. the
  CIFAR-format Digits of dsa_fidelity.py) read directly, or a tensor file written by `save_tensors` (e.g. the
  8x8 Digits split). This skips the per-image PIL transforms of the real loaders, which flatters its speed;
- utils_clom.Dataloader.get_dataset_info learns the tensor file's shape (it knows only its own data sets);
- on a machine without CUDA, Tensor.cuda / Module.cuda are the identity and utils_clom.utils.set_gpu keeps a
  model where it is (its CLoM and trainer hard-code .cuda());
- its main_DM.py as published imports a CCLoM class that utils_clom lacks and reads args.CCLoM, which its
  parser never defines: both are supplied, switched off (CCLoM is used only when args.CCLoM is set).

    python benchmarks/paper_code.py --paper-code <checkout> --data <cifar folder | tensors.pt> \\
        methods/DC_DSA_DM/main.py --method DC --dataset CIFAR10 ...

runs one of its scripts with these stand-ins (the script path is relative to the checkout). Its runs are not
reproducible: its network builder reseeds torch from the clock and its DSA seeds come from the clock;
--seed seeds python, numpy and torch once before the script starts. --start FILE makes its synthetic set start
from the images of a saved set (its `torch.randn` draw of the set's shape returns them), e.g. to run it from
the very starting images of one of our runs.
"""

from __future__ import annotations

import argparse
import pickle
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]


def is_paper_checkout(path: Path) -> bool:
    return (path / "methods/DC_DSA_DM/main.py").is_file() and (path / "utils_clom").is_dir()


def save_tensors(path: Path, name: str, train, test) -> Path:
    """A data set's splits (our ImageSets, normalized) as one tensor file the paper's process can read without
    importing this repository (its `utils` package would clash with the paper's utils.py)."""
    import torch

    torch.save({"name": name, "mean": train.mean.tolist(), "std": train.std.tolist(),
                "num_classes": train.num_classes, "train": (train.images().cpu(), train.labels.cpu()),
                "test": (test.images().cpu(), test.labels.cpu())}, path)
    return path


def install_stand_ins(paper: Path, data: Path):
    """In this process: put the paper's checkout first on sys.path and install the stand-ins; returns the
    paper's methods/DC_DSA_DM/utils module. `data`: a CIFAR-10 pickle folder or a save_tensors file."""
    import torch

    sys.path[:] = [str(paper / "methods/DC_DSA_DM"), str(paper)] + [p for p in sys.path
                                                                    if Path(p or ".").resolve() != ROOT]
    import utils_clom.Dataloader as paper_loader
    import utils_clom.utils as paper_clom_utils

    import utils as paper_utils  # the paper's methods/DC_DSA_DM/utils.py

    loaded = _tensor_file(data, paper_utils) if data.is_file() else _cifar_folder(data, paper_utils)
    channel, im_size, num_classes = loaded[0], loaded[1], loaded[2]
    own_info = paper_loader.get_dataset_info
    name = torch.load(data, weights_only=True)["name"] if data.is_file() else "CIFAR10"
    paper_utils.get_dataset = lambda dataset, data_path: loaded
    paper_loader.get_dataset = lambda dataset, data_path, *a, **k: loaded
    paper_loader.get_dataset_info = (lambda dataset: (channel, im_size, num_classes) if dataset == name
                                     else own_info(dataset))
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
        paper_clom_utils.set_gpu = lambda args, model: model
    import utils_clom.CLoM as paper_clom

    if not hasattr(paper_clom, "CCLoM"):
        paper_clom.CCLoM = None
    parse_args = argparse.ArgumentParser.parse_args

    def parse_args_with_cclom_off(self, *a, **k):
        namespace = parse_args(self, *a, **k)
        namespace.CCLoM = getattr(namespace, "CCLoM", False)
        return namespace

    argparse.ArgumentParser.parse_args = parse_args_with_cclom_off
    return paper_utils


def run_script(paper: Path, script: str, argv: list[str]) -> None:
    """Run one of the paper's scripts (path relative to its checkout) as __main__ with `argv`."""
    path = paper / script
    sys.argv = [str(path), *argv]
    runpy.run_path(str(path), run_name="__main__")


def _split(images, labels, paper_utils):
    return paper_utils.TensorDataset(images, labels)


def _loaded(channel, im_size, num_classes, mean, std, train, test, paper_utils):
    """What the paper's get_dataset returns."""
    import torch

    testloader = torch.utils.data.DataLoader(test, batch_size=256, shuffle=False, num_workers=0)
    return channel, im_size, num_classes, [str(c) for c in range(num_classes)], mean, std, train, test, testloader


def _tensor_file(path: Path, paper_utils):
    import torch

    content = torch.load(path, weights_only=True)
    images = content["train"][0]
    train = _split(*content["train"], paper_utils)
    test = _split(*content["test"], paper_utils)
    return _loaded(images.shape[1], tuple(images.shape[2:]), content["num_classes"], content["mean"],
                   content["std"], train, test, paper_utils)


def _cifar_folder(folder: Path, paper_utils):
    """The CIFAR-10 pickles in `folder`, normalized with CIFAR-10's statistics, as the paper's loader would."""
    import numpy as np
    import torch

    def split(names):
        parts = [pickle.load(open(folder / n, "rb"), encoding="bytes") for n in names]
        pixels = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
        labels = torch.tensor(sum((list(p[b"labels"]) for p in parts), []))
        images = torch.from_numpy(pixels).float() / 255
        mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return _split((images - mean) / std, labels, paper_utils)

    train = split([f"data_batch_{i}" for i in range(1, 6)])
    test = split(["test_batch"])
    return _loaded(3, (32, 32), 10, CIFAR_MEAN, CIFAR_STD, train, test, paper_utils)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper-code", required=True, type=Path, help="a checkout of the paper's repository")
    parser.add_argument("--data", required=True, type=Path, help="CIFAR-10 pickle folder or save_tensors file")
    parser.add_argument("--seed", type=int, default=None, help="seed python, numpy and torch before the script")
    parser.add_argument("--start", type=Path, default=None,
                        help="a saved set (res_*.pt): the synthetic images start from its data[0] images")
    parser.add_argument("script", help="the paper's script, relative to its checkout")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="the script's flags")
    args = parser.parse_args()
    paper = args.paper_code.expanduser().resolve()
    if not is_paper_checkout(paper):
        sys.exit(f"paper_code.py: {paper} is not a checkout of the paper's code (no methods/DC_DSA_DM/main.py "
                 "and utils_clom/)")
    install_stand_ins(paper, args.data.resolve())
    if args.seed is not None:
        import random

        import numpy as np
        import torch

        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
    if args.start is not None:
        start_from(args.start)
    run_script(paper, args.script, args.argv)


def start_from(path: Path) -> None:
    """torch.randn of the saved set's shape (the paper's scripts draw their noise-initialized synthetic set
    with it) returns the saved images instead; every other draw is left alone."""
    import torch

    images = torch.load(path, weights_only=True)["data"][0][0]
    randn = torch.randn

    def randn_or_start(*size, **options):
        shape = options.get("size", size[0] if len(size) == 1 and not isinstance(size[0], int) else size)
        if tuple(shape) != tuple(images.shape):
            return randn(*size, **options)
        start = images.to(options.get("dtype") or torch.float32, copy=True)
        return start.to(options.get("device") or "cpu").requires_grad_(bool(options.get("requires_grad")))

    torch.randn = randn_or_start


if __name__ == "__main__":
    main()
