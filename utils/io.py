"""Every on-disk path and file format of the suite, and the atomic writes that keep user files safe."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import socket
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from networks.foundation import unwrap_state_dict
from utils.errors import UserError, one_line

POOL_ROOT = "pretrained_model"
POOL_INFO_NAME = "model_info.json"


# ---------------------------------------------------------------- output folders
def ensure_dir(path: str | os.PathLike, what: str | None = None) -> Path:
    """mkdir -p for every output folder (save paths, pool roots, log folders): one clear line when it cannot
    be made or written to — part of the path is a file, a parent is missing or read-only, ... `what` names
    the setting the path came from (e.g. '--save_path'), for the message."""
    path = Path(path)
    where = f"{what} {path}" if what else str(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{where}: {parent} is a file, but a folder is expected there (move it or pick "
                            "another path)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{where}: cannot create the folder ({_reason(err)})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{where}: the folder is not writable (permission denied); pick another path")
    return path


def new_output_dir(path: str | os.PathLike, what: str | None = None) -> Path:
    """A folder that must not exist yet (e.g. quickstart's --out): created, or one clear line."""
    path = Path(path)
    where = f"{what} {path}" if what else str(path)
    if not os.path.lexists(path):
        ensure_dir(path.parent, what)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            pass
        except OSError as err:
            raise UserError(f"{where}: cannot create the folder ({_reason(err)})") from None
    kind = "a folder" if path.is_dir() else "a file"
    raise UserError(f"{where} already exists ({kind}); pick a new folder, the results of a run are never mixed "
                    "with another's")


def created_dirs(path: str | os.PathLike) -> list[Path]:
    """The folders mkdir -p would create for `path` (missing ones, outermost first): so a run that fails
    before writing anything can remove exactly what it made (remove_empty_dirs)."""
    path = Path(path)
    missing = [folder for folder in [path, *path.parents] if not os.path.lexists(folder)]
    return list(reversed(missing))


def remove_empty_dirs(folders: list[Path]) -> None:
    """rmdir the given folders, innermost first, as long as they are empty (never removes a file)."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def _reason(err: BaseException) -> str:
    return (getattr(err, "strerror", None) or one_line(err)).rstrip(".")


# ---------------------------------------------------------------- atomic writes
class WriteError(UserError):
    """A file could not be written (disk full, file-size limit, permissions). The previous version of the
    file, if any, is untouched: new contents go to a temp file that replaces it only once complete."""


_TEMP_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


def _temp_file(folder: Path, name: str) -> tuple[int, Path]:
    """A new temp file beside the target. Created with mode 0o666 so the umask applies, as to any file the
    user makes (mkstemp's 0o600 would make results unreadable to a lab's group)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _link_new(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path` only if nothing has that name: os.link fails when the target exists, so
    two writers racing for one name can never overwrite each other. (Without hard links: exists + rename.)"""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)


def _write_file(data: bytes, path: Path, overwrite: bool) -> None:
    """The atomic write itself (raises FileExistsError when overwrite=False and `path` exists, OSError
    when the disk refuses); the temp file never outlives it."""
    fd, tmp = _temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def atomic_bytes_save(data: bytes, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `data` to a temp file in the same folder, flush it to disk, then rename it to `path`: readers
    and a crash at any moment see the old file or the new one, never half of one. overwrite=False refuses
    an existing `path` (atomically, even against a concurrent writer). The file gets the user's umask."""
    path = Path(path)
    refusal = f"{path} already exists; refusing to overwrite it (move it away or pick another folder)"
    if not overwrite and os.path.lexists(path):
        raise UserError(refusal)
    ensure_dir(path.parent)
    try:
        _write_file(data, path, overwrite)
    except FileExistsError:
        raise UserError(refusal) from None
    except OSError as err:
        kept = "the previous version is intact" if os.path.exists(path) else "nothing was written"
        raise WriteError(f"cannot write {path}: {_reason(err)} ({kept}; every file written before it is "
                         "intact)") from None
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    buffer = io.BytesIO()  # serialized in memory first: a write error is then always an OSError of ours
    torch.save(obj, buffer)
    return atomic_bytes_save(buffer.getvalue(), path, overwrite)


def atomic_json_save(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    return atomic_bytes_save(json.dumps(obj, indent=2, sort_keys=True).encode(), path, overwrite)


def save_new_file(data: bytes, path: str | os.PathLike) -> Path:
    """`path` if free, else the first free `<stem>_<k><suffix>` beside it — claimed atomically, so two
    processes saving at once get two files."""
    path = Path(path)
    k = 0
    candidate = path
    while True:
        try:
            return atomic_bytes_save(data, candidate)
        except WriteError:
            raise
        except UserError:
            if not os.path.lexists(candidate):
                raise
        k += 1
        candidate = path.with_name(f"{path.stem}_{k}{path.suffix}")


def remove_temp_files(folder: str | os.PathLike) -> None:
    """Delete temp files that a killed writer left in `folder` (call only while holding its lock)."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            if _TEMP_NAME.fullmatch(tmp.name):  # only ours: .<name>.<pid>.<8 hex digits>.tmp
                with contextlib.suppress(OSError):
                    tmp.unlink()


# ---------------------------------------------------------------- locks: one owner per output folder
LOCK_NAME = ".lock"


class FolderBusy(UserError):
    """Another live process holds the folder's lock."""


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), so a recycled pid is not taken for
    the lock's owner; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def _read_lock(lock: Path) -> dict | None:
    try:
        info = json.loads(lock.read_text())
        return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: nobody can tell its owner


def lock_is_stale(info: dict) -> bool:
    """A lock whose owner is gone: same host, and that pid no longer runs (or runs another program)."""
    if not info or info.get("host") != socket.gethostname():
        return False
    pid = info["pid"]
    if not _alive(pid):
        return True
    started = info.get("started")
    return started is not None and _process_start(pid) not in (None, started)


def describe_lock(info: dict, lock: Path) -> str:
    if not info:
        return f"its lock file {lock} cannot be read (delete it if no run uses the folder)"
    command = str(info.get("command", ""))
    command = command if len(command) <= 160 else command[:157] + "..."
    return (f"pid {info['pid']} on {info.get('host', '?')}, since {info.get('time', '?')}: {command} "
            f"(if that run is gone, delete {lock})")


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """The live owner of `folder`'s lock (its lock file's contents), or None when unlocked or stale."""
    lock = Path(folder) / LOCK_NAME
    info = _read_lock(lock)
    if info is None or (info and lock_is_stale(info)):
        return None
    return info


class FolderLock:
    """Exclusive ownership of an output folder for a process's whole run: a lock file holding the owner's
    pid, host, start time and command. It is created complete and atomically (written to a temp file, then
    os.link'ed, which fails when the lock exists), removed on release, and recognised as stale after a
    crash (same host, pid gone), in which case the next run takes it over."""

    def __init__(self, folder: str | os.PathLike, busy_hint: str = "wait for it to finish, or pick another folder"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.busy_hint = busy_hint
        self.token = secrets.token_hex(8)
        self.held = False

    def acquire(self) -> FolderLock:
        pid = os.getpid()
        info = {"pid": pid, "host": socket.gethostname(), "started": _process_start(pid), "token": self.token,
                "time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        data = json.dumps(info).encode()
        ensure_dir(self.folder)
        for _ in range(20):
            try:
                _write_file(data, self.path, overwrite=False)
                self.held = True
                return self
            except FileExistsError:
                pass
            except OSError as err:
                raise WriteError(f"cannot create the lock file {self.path}: {_reason(err)}") from None
            holder = _read_lock(self.path)
            if holder is None:
                continue  # released meanwhile
            if not lock_is_stale(holder):
                raise FolderBusy(f"{self.folder} is in use by another run: {describe_lock(holder, self.path)}; "
                                 f"{self.busy_hint}")
            self._break_stale(holder)
        raise FolderBusy(f"cannot take the lock {self.path}: other processes keep taking it; try again")

    def _break_stale(self, seen: dict) -> None:
        """Remove a dead owner's lock. It is first renamed to a private name (only one process can), then
        checked to be the lock we saw: if another process had replaced it meanwhile, it is put back."""
        private = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            os.rename(self.path, private)
        except FileNotFoundError:
            return
        if _read_lock(private) != seen:
            with contextlib.suppress(OSError):
                _link_new(private, self.path)
        with contextlib.suppress(OSError):
            private.unlink()

    def release(self) -> None:
        """Remove the lock, if it is still ours."""
        if self.held:
            self.held = False
            info = _read_lock(self.path)
            if info and info.get("token") == self.token:
                with contextlib.suppress(OSError):
                    self.path.unlink()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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


class DamagedFile(UserError):
    """A file is there but cannot be read as what it should be (truncated, overwritten, foreign)."""


def safe_torch_load(path: str | os.PathLike, what: str = "file", map_location="cpu") -> Any:
    """torch.load with weights_only=True (never unpickle arbitrary code); failures are one clear line
    saying what is wrong with the file (DamagedFile), never torch's advice to unpickle it unsafely."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} not found")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; expected a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {_reason(err)}") from None
    if size == 0:
        raise DamagedFile(f"{what} {path} is damaged: it is empty (cut short while it was written?)")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (Exception, MemoryError) as err:  # torch raises many types for damaged or foreign files
        raise DamagedFile(f"{what} {path} {_why_unreadable(err, head, path)}") from None


def _why_unreadable(err: BaseException, head: bytes, path: Path) -> str:
    text = str(err)
    if "Weights only load failed" in text and "Unsupported global" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1].split(". Please use", 1)[0]
        return (f"is not readable as one: it holds Python objects other than tensors and numbers, which are "
                f"never unpickled because that could run code ({' '.join(detail.split())})")
    if head[:2] == b"PK":
        if isinstance(err, OSError) or not zipfile.is_zipfile(path):
            return "is damaged: it is truncated (cut short while it was written?)"
        return f"is damaged: {' '.join(text.split('. This is an internal', 1)[0].split())[:200]}"
    if head[:1] == b"\x80":  # torch's legacy (pickle) format
        return f"is damaged: {one_line(err, 200)}"
    return "is not a PyTorch file (neither a zip archive nor a pickle)"


# ---------------------------------------------------------------- pools of pre-trained models
def pool_arch_dir(dataset: str, model: str, root: str = POOL_ROOT) -> Path:
    return Path(root) / dataset / "original" / model


def pool_run_dir(dataset: str, model: str, index: int, root: str = POOL_ROOT) -> Path:
    return pool_arch_dir(dataset, model, root) / f"index_{index}"


def pool_checkpoint_path(dataset: str, model: str, index: int, epoch: int, root: str = POOL_ROOT) -> Path:
    return pool_run_dir(dataset, model, index, root) / f"{dataset}_{model}_original_epoch{epoch}.pth"


def claim_run_dir(parent: str | os.PathLike, prefix: str = "index_",
                  what: str | None = None) -> tuple[int, Path, FolderLock]:
    """Create the first free `<prefix><k>` folder and lock it for this process (release the lock when done).
    A folder holding nothing but a dead process's lock — a reservation a crash left behind — is taken over."""
    parent = ensure_dir(parent, what)
    k = 0
    while True:
        candidate = parent / f"{prefix}{k}"
        try:
            candidate.mkdir()
        except FileExistsError:
            if _only_a_stale_lock(candidate):
                lock = FolderLock(candidate)
                with contextlib.suppress(UserError):
                    lock.acquire()
                    if [entry.name for entry in candidate.iterdir()] == [LOCK_NAME]:
                        return k, candidate, lock
                    lock.release()
            k += 1
            continue
        except OSError as err:
            raise UserError(f"{what + ' ' if what else ''}{parent}: cannot create {candidate.name} "
                            f"({_reason(err)})") from None
        return k, candidate, FolderLock(candidate).acquire()


class RunDirClaims:
    """`count` index folders claimed (claim_run_dir) under `parent` for one run, released together; on
    release, folders the run left empty are removed, with the parents it had to create."""

    def __init__(self, parent: str | os.PathLike, count: int, what: str | None = None):
        self.made = created_dirs(parent) if count else []
        self.claims: list[tuple[int, Path, FolderLock]] = []
        try:
            for _ in range(count):
                self.claims.append(claim_run_dir(parent, what=what))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for _, run_dir, lock in self.claims:
            lock.release()
            remove_empty_dirs([run_dir])
        self.claims = []
        remove_empty_dirs(self.made)


def _only_a_stale_lock(folder: Path) -> bool:
    try:
        entries = [entry.name for entry in folder.iterdir()]
    except OSError:
        return False
    if entries != [LOCK_NAME]:
        return False
    info = _read_lock(folder / LOCK_NAME)
    return bool(info) and lock_is_stale(info)


def load_state_dict_file(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    state = unwrap_state_dict(safe_torch_load(path, what))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DamagedFile(f"{what} {path} does not hold a state_dict")
    bad = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise DamagedFile(f"{what} {path} holds NaN or infinite weights ({', '.join(bad[:3])}"
                          f"{', ...' if len(bad) > 3 else ''}): its training diverged; retrain it with a smaller --lr")
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
    if images.is_floating_point() and not torch.isfinite(images).all():
        count = int((~torch.isfinite(images)).sum())
        raise DamagedFile(f"{path}: the images of data[{experiment}] hold {count} NaN or infinite values; it is not "
                          "a usable synthetic set (its distillation diverged?)")
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
