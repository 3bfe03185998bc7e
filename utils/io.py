"""Every on-disk path and file format of the suite, and the atomic writes that keep user files safe."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from networks.foundation import unwrap_state_dict
from utils.misc import UserError, one_line

POOL_ROOT = "pretrained_model"
POOL_INFO_NAME = "model_info.json"


# ---------------------------------------------------------------- atomic writes
def _atomic_write(path: str | os.PathLike, write, overwrite: bool) -> Path:
    """Write through a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; refusing to overwrite it (move it away or pick another folder)")
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    return _atomic_write(path, lambda handle: torch.save(obj, handle), overwrite)


def atomic_json_save(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    data = json.dumps(obj, indent=2, sort_keys=True).encode()
    return _atomic_write(path, lambda handle: handle.write(data), overwrite)


def atomic_bytes_save(data: bytes, path: str | os.PathLike, overwrite: bool = False) -> Path:
    return _atomic_write(path, lambda handle: handle.write(data), overwrite)


def first_free_path(path: str | os.PathLike) -> Path:
    """`path` if nothing is there, else the first free `<stem>_<k><suffix>` beside it (k = 1, 2, ...)."""
    path = Path(path)
    k = 0
    candidate = path
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}_{k}{path.suffix}")
    return candidate


def ensure_dir(path: str | os.PathLike) -> Path:
    """mkdir -p, with one clear line when part of the path is a file."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{parent} is a file, but a folder is expected there (move it or pick another path)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_json(path: str | os.PathLike) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable JSON file ({one_line(err)})") from None


# ---------------------------------------------------------------- safe loading
# The paper code stores numpy floats in its result files; these are the only globals we allow for them.
def _numpy_safe_globals() -> list:
    names = [np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or np.core
    names += [core.multiarray.scalar, core.multiarray._reconstruct]
    names += [type(np.dtype(kind)) for kind in ("float64", "float32", "int64", "int32", "bool")]
    return names


def safe_torch_load(path: str | os.PathLike, what: str = "file", map_location="cpu") -> Any:
    """torch.load with weights_only=True (never unpickle arbitrary code); failures are one clear line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} not found")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; expected a file")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise UserError(f"cannot read {what} {path}: {one_line(err)}") from None


# ---------------------------------------------------------------- pools of pre-trained models
def pool_arch_dir(dataset: str, model: str, root: str = POOL_ROOT) -> Path:
    return Path(root) / dataset / "original" / model


def pool_run_dir(dataset: str, model: str, index: int, root: str = POOL_ROOT) -> Path:
    return pool_arch_dir(dataset, model, root) / f"index_{index}"


def pool_checkpoint_path(dataset: str, model: str, index: int, epoch: int, root: str = POOL_ROOT) -> Path:
    return pool_run_dir(dataset, model, index, root) / f"{dataset}_{model}_original_epoch{epoch}.pth"


def reserve_run_dir(parent: str | os.PathLike, prefix: str = "index_", start: int = 0) -> tuple[int, Path]:
    """Create and return the first free `<prefix><k>` folder. mkdir is atomic, so two processes
    (or two torchrun ranks) reserving at once never get the same folder."""
    parent = ensure_dir(parent)
    k = start
    while True:
        candidate = parent / f"{prefix}{k}"
        try:
            candidate.mkdir()
            return k, candidate
        except FileExistsError:
            k += 1


def load_state_dict_file(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    state = unwrap_state_dict(safe_torch_load(path, what))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what} {path} does not hold a state_dict")
    return state


# ---------------------------------------------------------------- synthetic-set result files
def result_file_name(method: str, dataset: str, model: str, ipc: int) -> str:
    return f"res_{method}_{dataset}_{model}_{ipc}ipc.pt"


def load_result_file(path: str | os.PathLike, experiment: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Read `{'data': [[images, labels], ...], 'accs_all_exps': {...}}` (ours or the paper code's)."""
    content = safe_torch_load(path, "synthetic data file")
    data = content.get("data") if isinstance(content, dict) else None
    if not isinstance(data, (list, tuple)) or not data:
        raise UserError(f"{path} is not a synthetic-set file: expected a dict with 'data': [[images, labels], ...]")
    if not 0 <= experiment < len(data):
        raise UserError(f"{path} holds {len(data)} experiment(s); experiment {experiment} does not exist")
    entry = data[experiment]
    if not isinstance(entry, (list, tuple)) or len(entry) < 2:
        raise UserError(f"{path}: data[{experiment}] must be [images, labels]")
    images, labels = entry[0], entry[1]
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise UserError(f"{path}: data[{experiment}][0] must be a float tensor N×C×H×W")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.numel() != images.shape[0]:
        raise UserError(f"{path}: data[{experiment}][1] must be N labels matching the {images.shape[0]} images")
    return images.float(), labels.long(), content


def to_plain(value: Any) -> Any:
    """Numbers as python floats/ints, so result files load with weights_only=True anywhere."""
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value.item()
    return value
