"""MTT's expert-trajectory files ("replay buffers"): where they live, what they hold, how they are read.

Layout (MTT's buffer.py and distill.py): <buffer_path>/<dataset>/<model>/replay_buffer_<n>.pt, n = 0, 1, ...
read in order until the first missing number; for CIFAR10 and CIFAR100 without ZCA the data set folder is
<dataset>_NO_ZCA. Each file is torch.save of a list of experts; an expert is a list of train_epochs + 1 entries
(the initial weights, then the weights after each epoch); an entry is the list of the network's parameters in
`model.parameters()` order, CPU tensors. Buffers written by MTT's code load here and ours load there.

Beside each file ours writes replay_buffer_<n>.json (settings, seeds, test accuracy per epoch), which MTT's code
ignores; distill.py uses it to refuse experts trained on other inputs (e.g. with or without ZCA).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from utils.errors import UserError
from utils.io import DamagedFile, safe_torch_load

NO_ZCA_SUFFIX_DATASETS = ("CIFAR10", "CIFAR100")  # MTT marks their buffers made without ZCA
_FILE = re.compile(r"replay_buffer_(\d+)\.pt")

Expert = list[list[Tensor]]  # epochs x parameters


def buffer_dir(buffer_path: str | Path, dataset: str, model: str, zca: bool) -> Path:
    folder = dataset + ("_NO_ZCA" if dataset in NO_ZCA_SUFFIX_DATASETS and not zca else "")
    return Path(buffer_path) / folder / model


def buffer_file(folder: Path, number: int) -> Path:
    return folder / f"replay_buffer_{number}.pt"


def info_file(buffer: Path) -> Path:
    return buffer.with_suffix(".json")


def buffer_files(folder: Path) -> list[Path]:
    """replay_buffer_0.pt, _1, ... up to the first missing number, as MTT's distill.py reads them."""
    files = []
    while buffer_file(folder, len(files)).is_file():
        files.append(buffer_file(folder, len(files)))
    return files


def first_free_number(folder: Path) -> int:
    """The number MTT's buffer.py gives its next file: the first one not taken."""
    number = 0
    while buffer_file(folder, number).exists():
        number += 1
    return number


def stray_files(folder: Path, files: list[Path]) -> list[Path]:
    """Buffer files that are not read because a number before them is missing."""
    read = {path.name for path in files}
    return sorted((p for p in folder.glob("replay_buffer_*.pt") if _FILE.fullmatch(p.name) and p.name not in read),
                  key=lambda p: int(_FILE.fullmatch(p.name)[1]))


def load_experts(path: Path) -> list[Expert]:
    """One buffer file's experts. Memory-mapped: only the epochs a distillation touches are read from disk."""
    try:
        experts = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format file (or damaged): the checked loader says which
        experts = safe_torch_load(path, "expert buffer")
    if not (isinstance(experts, list) and experts and all(_is_expert(e) for e in experts)):
        raise DamagedFile(f"expert buffer {path} is not a list of expert trajectories (lists of epochs, each a "
                          "list of parameter tensors)")
    return experts


def _is_expert(expert) -> bool:
    return (isinstance(expert, list) and len(expert) > 0
            and all(isinstance(epoch, list) and epoch and all(isinstance(t, Tensor) for t in epoch)
                    for epoch in expert))


def read_info(buffer: Path) -> dict | None:
    """Our sidecar of a buffer file; None for MTT's files, which have none."""
    path = info_file(buffer)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DamagedFile(f"{path} is not a readable JSON file ({err})") from None
    if not isinstance(info, dict):
        raise DamagedFile(f"{path} is not a buffer description (a JSON object)")
    return info


def missing_buffer_message(folder: Path, command: str) -> str:
    return f"no expert trajectories in {folder} (replay_buffer_0.pt, ...); make them first with: {command}"


def check_zca_matches(files: list[Path], zca: bool) -> None:
    """Refuse experts whose description says they were trained on other inputs (with or without ZCA)."""
    for path in files:
        info = read_info(path)
        if info is not None and bool(info.get("zca")) != zca:
            trained = "with" if info.get("zca") else "without"
            raise UserError(f"{path} was trained {trained} ZCA whitening; distill {trained} --zca, or use other "
                            "experts")
