"""Where a run keeps its files and how it starts or resumes.

A run owns one save folder (the paper code's layout); in it: the result file, a checkpoint while running,
the log, the settings, and a PNG grid per evaluation. The result file is the paper code's
{'data', 'accs_all_exps'} plus what a sweep's summary needs: the settings, the flags, the seed and the
wall time. The checkpoint holds a `RunState` — the synthetic images of the current experiment, the
optimizer's momentum, where the run is, the finished experiments — plus the settings and seed, so
`--resume` ends with the same synthetic set as an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from methods.DC_DSA_DM.config import DistillConfig
from utils.data import get_dataset_spec
from utils.io import atomic_bytes_save, atomic_json_save, atomic_torch_save, result_file_name, safe_torch_load, to_plain
from utils.misc import UserError, resolve_seed

# Settings that do not change the synthetic set: a run may be resumed with other values of these.
OPERATIONAL_SETTINGS = ("data_path", "save_path", "download", "checkpoint_every", "resume", "stop_after",
                        "seed", "eager")


def save_folder(cfg: DistillConfig, dataset: str) -> Path:
    """(save_path or condensed/<dataset>/<method>/IPC<ipc>/) + the paper code's CLoM sub-folders, or
    original_method/ (the paper code appends these to a given save_path too)."""
    folder = Path(cfg.save_path) if cfg.save_path else Path("condensed") / dataset / cfg.method / f"IPC{cfg.ipc}"
    clom = cfg.clom
    if clom is None:
        return folder / "original_method"
    source = get_dataset_spec(clom.source_dataset or cfg.dataset).name
    return (folder / "CLoM" / f"{clom.distance}_distance" / f"{source}->{dataset}"
            / f"MP{clom.models_pool}_Nm[{clom.model_num}]_Epoch[{clom.epoch}]"
            / f"alphas{clom.models_pool}->{clom.alphas}")


@dataclass(frozen=True)
class RunFiles:
    """The files of one run, all named after the paper's result file res_<method>_<dataset>_<model>_<ipc>ipc."""

    folder: Path
    method: str
    dataset: str
    model: str
    ipc: int

    @classmethod
    def for_config(cls, cfg: DistillConfig) -> RunFiles:
        dataset = get_dataset_spec(cfg.dataset).name
        return cls(save_folder(cfg, dataset), cfg.method, dataset, cfg.model, cfg.ipc)

    @property
    def stem(self) -> str:
        return f"{self.method}_{self.dataset}_{self.model}_{self.ipc}ipc"

    @property
    def result(self) -> Path:
        return self.folder / result_file_name(self.method, self.dataset, self.model, self.ipc)

    @property
    def checkpoint(self) -> Path:
        return self.folder / f"checkpoint_{self.stem}.pt"

    @property
    def log(self) -> Path:
        return self.folder / f"log_{self.stem}.txt"

    @property
    def args(self) -> Path:
        return self.folder / f"args_{self.stem}.json"

    def png(self, exp: int, it: int) -> Path:
        return self.folder / f"vis_{self.stem}_exp{exp}_iter{it}.png"


@dataclass
class RunState:
    """Where a run is: what a checkpoint holds besides the settings and the seed."""

    exp: int = 0
    next_iteration: int = 0
    images: Tensor | None = None  # the synthetic set of experiment `exp` (None: not started yet)
    optimizer_state: dict | None = None
    accs_all_exps: dict[str, list[float]] = field(default_factory=dict)
    data: list[list[Tensor]] = field(default_factory=list)  # [[images, labels], ...] of finished experiments
    wall_time_s: float = 0.0  # seconds the run took in earlier processes (a resumed run's checkpoint)

    @property
    def resuming(self) -> bool:
        return self.exp > 0 or self.next_iteration > 0


class RunStore:
    """Writes a run's files, atomically (a crash while writing leaves the previous file intact). Under
    torchrun only the main process writes (`writes=False` elsewhere)."""

    def __init__(self, files: RunFiles, cfg: DistillConfig, seed: int, writes: bool = True):
        self.files, self.cfg, self.seed, self.writes = files, cfg, seed, writes
        self.started = time.monotonic()  # wall time counts from here (plus earlier processes' share)
        self.flags: dict | None = None  # the command line's flags, once save_settings has seen them

    def wall_time_s(self, state: RunState) -> float:
        """Seconds the run has taken so far, over every process that worked on it (resumes included)."""
        return round(state.wall_time_s + time.monotonic() - self.started, 2)

    def save_checkpoint(self, state: RunState) -> None:
        if self.writes:
            payload = {"exp": state.exp, "next_iteration": state.next_iteration,
                       "images": None if state.images is None else state.images.cpu(),
                       "optimizer_state": state.optimizer_state,
                       "accs_all_exps": to_plain(state.accs_all_exps), "data": state.data,
                       "config": to_plain(asdict(self.cfg)), "seed": self.seed,
                       "wall_time_s": self.wall_time_s(state)}
            atomic_torch_save(payload, self.files.checkpoint, overwrite=True)

    def save_result(self, state: RunState) -> None:
        """The experiments finished so far, in the paper code's format {'data', 'accs_all_exps'}, plus
        'normalized', the settings ('config'), the flags ('args'), the seed and the wall time so far.

        accs_all_exps[model] lists, experiment after experiment, the final test accuracy of each of the
        config's num_eval networks of that evaluation model (num_exp x num_eval values)."""
        if self.writes:
            payload = {"data": state.data, "accs_all_exps": to_plain(state.accs_all_exps), "normalized": True,
                       "config": to_plain(asdict(self.cfg)), "seed": self.seed, "args": to_plain(self.flags),
                       "wall_time_s": self.wall_time_s(state), "torch_version": str(torch.__version__)}
            atomic_torch_save(payload, self.files.result, overwrite=True)

    def save_png(self, png: bytes, exp: int, it: int) -> None:
        if self.writes:
            atomic_bytes_save(png, self.files.png(exp, it), overwrite=True)

    def save_settings(self, flags: Mapping) -> None:
        """The command line's flags and the seed, beside the result (args_<...>.json)."""
        self.flags = dict(flags)
        if self.writes:
            atomic_json_save(to_plain({"args": dict(flags), "seed": self.seed}), self.files.args, overwrite=True)

    def remove_checkpoint(self) -> None:
        if self.writes:
            self.files.checkpoint.unlink(missing_ok=True)


def _comparable(config: Mapping) -> dict:
    """The settings that shape the synthetic set (the CLoM feature cache size only changes the speed)."""
    kept = {key: value for key, value in config.items() if key not in OPERATIONAL_SETTINGS}
    if kept.get("clom"):
        kept["clom"] = {key: value for key, value in kept["clom"].items() if key != "cache_gb"}
    return kept


def start_or_resume(cfg: DistillConfig, files: RunFiles) -> tuple[RunState, int] | None:
    """(state, seed) to continue from: a new run, or the checkpoint's when resuming. None: the run is
    already complete. Refuses to touch another run's results."""
    if files.checkpoint.exists():
        if not cfg.resume:
            raise UserError(f"{files.folder} holds an unfinished run ({files.checkpoint.name}): pass "
                            f"--resume to continue it, or another --save_path")
        saved = safe_torch_load(files.checkpoint, "checkpoint")
        differ = sorted(key for key, value in _comparable(saved["config"]).items()
                        if _comparable(to_plain(asdict(cfg))).get(key) != value)
        if differ:
            raise UserError(f"cannot resume {files.checkpoint}: it was made with other settings "
                            f"({', '.join(differ)}); pass the same flags, or another --save_path")
        if cfg.seed is not None and cfg.seed != saved["seed"]:
            raise UserError(f"cannot resume {files.checkpoint}: it was made with --random_seed "
                            f"{saved['seed']}")
        state = RunState(saved["exp"], saved["next_iteration"], saved["images"], saved["optimizer_state"],
                         saved["accs_all_exps"], saved["data"], float(saved.get("wall_time_s", 0.0)))
        return state, int(saved["seed"])
    if files.result.exists():
        if not cfg.resume:
            raise UserError(f"{files.result} already exists: pass --resume (to finish or keep it) or another "
                            f"--save_path")
        done = len(safe_torch_load(files.result, "result file").get("data", []))
        if done >= cfg.num_exp:
            return None
        raise UserError(f"{files.result} holds {done} of {cfg.num_exp} experiments and there is no "
                        f"checkpoint to continue from; pick another --save_path")
    return RunState(), resolve_seed(cfg.seed)
