"""Where a run keeps its files and how it starts or resumes.

A run owns one save folder (the paper code's layout) for its whole life — a lock file in it names the
owner, and a second run into the folder is refused while the first is alive (RunClaim). In it: the result
file, a checkpoint while running (and the previous one beside it), the log, the settings, and a PNG grid
per evaluation. The result file is the paper code's {'data', 'accs_all_exps'} plus what a sweep's summary
needs: the settings, the flags, the seed and the wall time. The checkpoint holds a `RunState` — the
synthetic images of the current experiment, the optimizer's momentum, where the run is, the finished
experiments — plus the settings and seed, so `--resume` ends with the same synthetic set as an
uninterrupted run.

Resume rule. Settings that shape the synthetic set must be the same as saved, with two exceptions that
still end with exactly the set of an uninterrupted run: `iterations` may change while a checkpoint is
being continued (no experiment finished yet, and not below the iteration it reached: no step depends on
the total, and the evaluations before that point are the same), and `num_exp` may grow (the new experiments
are independent, seeded by their index). A finished experiment is never continued to more iterations:
its optimizer momentum is not kept, so the result would differ from a run made that long.

How the arithmetic is done must be the same too (`Execution`, recorded in checkpoints and results): the
device type (CPU and CUDA generators draw different numbers from one seed), the precision, --eager, and
whether the distillation's steps are compiled (eager and compiled steps round differently; on a CPU that
depends on the number of iterations). The card number, the card model, the torch version and the torchrun
world size may change: the draws stay the same, the arithmetic may round differently (a change of model or
torch version is logged).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from methods.clom import ClomOptions
from methods.DC_DSA_DM.config import DistillConfig
from utils import distributed
from utils.data import get_dataset_spec
from utils.distributed import DistInfo
from utils.errors import UserError
from utils.io import (
    DamagedFile,
    FolderLock,
    WriteError,
    atomic_bytes_save,
    atomic_json_save,
    atomic_torch_save,
    created_dirs,
    ensure_dir,
    remove_empty_dirs,
    remove_temp_files,
    result_file_name,
    safe_torch_load,
    to_plain,
)
from utils.log import get_logger
from utils.runtime import CPU_COMPILE_MIN_ITERATIONS, Runtime
from utils.seeding import resolve_seed

# Settings that do not change the synthetic set: a run may be resumed with other values of these. (The seed is
# compared on its own; precision and eager through the resolved Execution.)
OPERATIONAL_SETTINGS = ("data_path", "save_path", "download", "checkpoint_every", "resume", "stop_after",
                        "seed", "eager", "precision")


@dataclass(frozen=True)
class Execution:
    """How a run's arithmetic is done, beyond its settings. A run is continued only with the same `device`
    (type), `precision`, `eager` and `compiled`; `device_name` and `torch_version` may change (logged)."""

    device: str  # 'cpu' or 'cuda': the random streams are the device's, and CPU and CUDA draw differently
    precision: str  # fp32 | tf32 | bf16, as resolved for the device
    eager: bool  # --eager
    compiled: bool  # the distillation's steps run compiled (Runtime.compiles: on a CPU, from enough iterations)
    device_name: str = ""  # the card's model ('cpu' on a CPU)
    torch_version: str = ""

    @classmethod
    def of(cls, runtime: Runtime, iterations: int) -> Execution:
        device = runtime.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        return cls(device.type, runtime.precision, runtime.eager, runtime.compiles(iterations), name,
                   str(torch.__version__))

    def differences(self, saved: Mapping, iterations: tuple[int, int]) -> list[tuple[str, object, object]]:
        """(setting, saved, now) for what a continuation may not change; `iterations`: (saved, now). A change
        of the compile decision alone comes from --Iteration crossing the CPU's compile threshold."""
        shown = {"eager": lambda on: "on" if on else "off"}
        differ = [(key, shown.get(key, str)(saved.get(key)), shown.get(key, str)(getattr(self, key)))
                  for key in ("device", "precision", "eager") if saved.get(key) != getattr(self, key)]
        if not differ and saved.get("compiled") != self.compiled:
            differ.append(("iterations", *iterations))
        return differ

    def changed_hardware(self, saved: Mapping) -> str:
        """What may change but makes the arithmetic round differently: the card model, the torch version."""
        return "; ".join(f"{what} was {saved.get(key)}, now {getattr(self, key)}"
                         for key, what in (("device_name", "the device"), ("torch_version", "torch"))
                         if saved.get(key) and saved.get(key) != getattr(self, key))


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
    def previous_checkpoint(self) -> Path:
        """The checkpoint before the latest, kept until the run ends (in case the latest is damaged)."""
        return self.folder / f"checkpoint_{self.stem}.prev.pt"

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

    def __init__(self, files: RunFiles, cfg: DistillConfig, seed: int, writes: bool = True,
                 execution: Execution | None = None):
        self.files, self.cfg, self.seed, self.writes = files, cfg, seed, writes
        self.execution = None if execution is None else asdict(execution)
        self.started = time.monotonic()  # wall time counts from here (plus earlier processes' share)
        self.flags: dict | None = None  # the command line's flags, once save_settings has seen them

    def wall_time_s(self, state: RunState) -> float:
        """Seconds the run has taken so far, over every process that worked on it (resumes included)."""
        return round(state.wall_time_s + time.monotonic() - self.started, 2)

    def save_checkpoint(self, state: RunState) -> None:
        """The new checkpoint is written beside the old one and only then takes its name; the old one is
        kept as the previous checkpoint, so no crash can leave only a damaged checkpoint."""
        if self.writes:
            payload = {"exp": state.exp, "next_iteration": state.next_iteration,
                       "images": None if state.images is None else state.images.cpu(),
                       "optimizer_state": state.optimizer_state,
                       "accs_all_exps": to_plain(state.accs_all_exps), "data": state.data,
                       "config": to_plain(asdict(self.cfg)), "seed": self.seed, "execution": self.execution,
                       "wall_time_s": self.wall_time_s(state)}
            checkpoint, previous = self.files.checkpoint, self.files.previous_checkpoint
            try:
                if checkpoint.exists():
                    os.replace(checkpoint, previous)
                atomic_torch_save(payload, checkpoint, overwrite=True)
            except OSError as err:
                raise WriteError(f"cannot write {checkpoint}: {err.strerror or err}") from None
            except WriteError as err:
                raise WriteError(f"{err}; once the disk has room, continue with --resume") from None

    def save_result(self, state: RunState) -> None:
        """The experiments finished so far, in the paper code's format {'data', 'accs_all_exps'}, plus
        'normalized', the settings ('config'), the flags ('args'), the seed and the wall time so far.

        accs_all_exps[model] lists, experiment after experiment, the final test accuracy of each of the
        config's num_eval networks of that evaluation model (num_exp x num_eval values)."""
        if self.writes:
            payload = {"data": state.data, "accs_all_exps": to_plain(state.accs_all_exps), "normalized": True,
                       "config": to_plain(asdict(self.cfg)), "seed": self.seed, "args": to_plain(self.flags),
                       "wall_time_s": self.wall_time_s(state), "torch_version": str(torch.__version__),
                       "execution": self.execution}
            try:
                atomic_torch_save(payload, self.files.result, overwrite=True)
            except WriteError as err:
                raise WriteError(f"{err}; once the disk has room, continue with --resume") from None

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
            self.files.previous_checkpoint.unlink(missing_ok=True)


class RunClaim:
    """The run's ownership of its save folder, from before it reads anything there until it ends: the
    folder is created (checked), locked (the main process holds the lock; under torchrun the others learn
    whether it got it), and on exit unlocked — and removed again if this run created it and wrote nothing
    (a run that fails at start leaves no empty folders behind)."""

    def __init__(self, files: RunFiles, dist: DistInfo | None = None):
        self.files, self.dist = files, dist or DistInfo()
        self.lock: FolderLock | None = None
        self.made: list[Path] = []

    def __enter__(self) -> RunClaim:
        problem = None
        if self.dist.is_main:
            self.made = created_dirs(self.files.folder)
            try:
                ensure_dir(self.files.folder, "--save_path")
                self.lock = FolderLock(self.files.folder, "wait for it to finish, or pick another --save_path")
                self.lock.acquire()
                remove_temp_files(self.files.folder)  # left by a killed writer; no one else writes here now
            except UserError as err:
                problem = str(err)
                remove_empty_dirs(self.made)
        problem = distributed.broadcast_object(self.dist, problem)
        if problem:
            raise UserError(problem)
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.release()
            remove_empty_dirs(self.made)


class SettingsDiffer(UserError):
    """--resume with settings other than the saved run's. `differences`: (setting, saved, now); flags.py
    names the flags."""

    def __init__(self, path: Path, differences: list[tuple[str, object, object]], note: str = ""):
        self.path, self.differences, self.note = path, differences, note
        super().__init__(self.message(lambda setting: setting))

    def message(self, flag_of) -> str:
        listed = "; ".join(f"{flag_of(setting)} was {_shown(saved)}, now {_shown(now)}"
                           for setting, saved, now in self.differences)
        return (f"cannot resume {self.path}: it was made with other settings ({listed}){self.note}; pass the "
                f"saved values, or another --save_path for a new run")


def _shown(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _flat(config: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and key == "clom":
            out.update(_flat(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out


def _comparable(config: Mapping) -> dict:
    """The settings that shape the synthetic set (the CLoM feature cache size only changes the speed), flat:
    {'ipc': 10, 'clom.alphas': [...], ...}."""
    kept = _flat({key: value for key, value in config.items() if key not in OPERATIONAL_SETTINGS})
    kept.pop("clom.cache_gb", None)
    if kept.get("clom") is None:
        kept.pop("clom", None)
    return kept


def _defaults() -> dict:
    """Each setting's default, flat: what a run saved before that setting existed ran with."""
    def of(cls, prefix=""):
        return {prefix + f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}
    return {**of(DistillConfig), **of(ClomOptions, "clom.")}


def _differences(saved_config: Mapping, saved_seed, cfg: DistillConfig, ignore=()) -> list[tuple[str, object, object]]:
    saved, now = _comparable(saved_config), _comparable(to_plain(asdict(cfg)))
    defaults = to_plain(_defaults())
    for key in now:  # a setting newer than the saved run: it ran with the default
        if key not in saved and key in defaults and (not key.startswith("clom.") or "clom.distance" in saved):
            saved[key] = defaults[key]
    with_clom = [any(key.startswith("clom.") for key in config) for config in (saved, now)]
    if with_clom[0] != with_clom[1]:  # CLoM on in one, off in the other: that is the difference to name
        saved, now = ({key: value for key, value in config.items() if not key.startswith("clom.")}
                      for config in (saved, now))
        saved["CLoM"], now["CLoM"] = ("on" if flag else "off" for flag in with_clom)
    keys = [key for key in dict.fromkeys([*saved, *now]) if key not in ignore]
    differ = [(key, saved.get(key), now.get(key)) for key in keys if saved.get(key) != now.get(key)]
    if cfg.seed is not None and saved_seed is not None and cfg.seed != saved_seed:
        differ.append(("seed", saved_seed, cfg.seed))
    return differ


_CHECKPOINT_KEYS = {"exp", "next_iteration", "images", "optimizer_state", "accs_all_exps", "data", "config", "seed"}


def _read_checkpoint(path: Path) -> dict:
    saved = safe_torch_load(path, "checkpoint")
    if not isinstance(saved, dict) or not _CHECKPOINT_KEYS <= set(saved):
        raise DamagedFile(f"checkpoint {path} is not a checkpoint of this suite (keys missing)")
    return saved


def _load_checkpoint(files: RunFiles) -> dict:
    """The latest readable checkpoint: the newest, or the one before it when the newest is damaged (then
    the run continues from a little earlier and, being deterministic, ends the same)."""
    newest, previous = files.checkpoint, files.previous_checkpoint
    problem = None
    if newest.exists():
        try:
            return _read_checkpoint(newest)
        except UserError as err:
            problem = err
    if previous.exists():
        try:
            saved = _read_checkpoint(previous)
        except UserError:
            pass
        else:
            if problem is not None:
                get_logger().warning("%s; continuing from the previous checkpoint %s (iteration %d)", problem,
                                     previous.name, saved["next_iteration"])
            return saved
    gone = ", ".join(str(path) for path in (newest, previous) if path.exists())
    raise DamagedFile(f"{problem}; no readable checkpoint is left to resume from. To start this run over, delete "
                      f"{gone} (finished experiments stay in the result file, if any) and run again with --resume; "
                      "or pick another --save_path")


def _execution_differences(saved: Mapping, execution: Execution | None, cfg: DistillConfig,
                           differ: list[tuple[str, object, object]]) -> tuple[list[tuple[str, object, object]], str]:
    """What a continuation with `execution` would change in how the saved run computes (see Execution), with
    a note on why; `differ`: the settings already found to differ. Logs a change of card model or torch."""
    record = saved.get("execution")
    if execution is None:
        return [], ""
    if not isinstance(record, Mapping):
        get_logger().warning("the saved run does not record its device, precision and fast paths; continuing with "
                             "device %s, precision %s", execution.device, execution.precision)
        return [], ""
    more = [item for item in execution.differences(record, (saved["config"].get("iterations"), cfg.iterations))
            if item[0] not in {key for key, _, _ in differ}]
    if not more:
        if changed := execution.changed_hardware(record):
            get_logger().warning("resuming with %s: the same random draws, but the arithmetic may round "
                                 "differently from an uninterrupted run", changed)
        return [], ""
    if more[0][0] == "iterations":
        return more, (f"; on a CPU a distillation of at least {CPU_COMPILE_MIN_ITERATIONS} iterations compiles its "
                      f"steps and a shorter one does not, so the rest would round unlike the saved part")
    return more, ("; the device type, precision and --eager must be the saved ones: CPU and CUDA draw different "
                  "random numbers from one seed, and other precisions or fast paths round differently")


def start_or_resume(cfg: DistillConfig, files: RunFiles,
                    execution: Execution | None = None) -> tuple[RunState, int] | None:
    """(state, seed) to continue from: a new run, the checkpoint's when resuming, or a finished result's
    when more experiments are asked for. None: the run is already complete. Refuses to touch another run's
    results and to resume with settings, or an `execution`, that would not end as an uninterrupted run (see
    the module doc)."""
    if files.checkpoint.exists() or files.previous_checkpoint.exists():
        if not cfg.resume:
            raise UserError(f"{files.folder} holds an unfinished run ({files.checkpoint.name}): pass "
                            f"--resume to continue it, or another --save_path")
        saved = _load_checkpoint(files)
        reached, finished = int(saved["next_iteration"]), len(saved["data"])
        more_iterations_ok = finished == 0 and reached <= cfg.iterations
        differ = _differences(saved["config"], saved["seed"], cfg,
                              ignore=("iterations",) if more_iterations_ok else ())
        note = ""
        if any(key == "iterations" for key, _, _ in differ):
            note = (f"; iterations may change only before the first experiment ends, and not below the "
                    f"iteration reached ({reached})" if finished == 0 else
                    "; iterations cannot change once an experiment has finished with the saved value")
        more, more_note = _execution_differences(saved, execution, cfg, differ)
        if differ or more:
            raise SettingsDiffer(files.checkpoint, differ + more, note + more_note)
        state = RunState(saved["exp"], saved["next_iteration"], saved["images"], saved["optimizer_state"],
                         saved["accs_all_exps"], saved["data"], float(saved.get("wall_time_s", 0.0)))
        return state, int(saved["seed"])
    if files.result.exists():
        if not cfg.resume:
            raise UserError(f"{files.result} already exists: pass --resume (to finish or keep it) or another "
                            f"--save_path")
        content = safe_torch_load(files.result, "result file")
        data = content.get("data") if isinstance(content, dict) else None
        if not isinstance(data, list):
            raise DamagedFile(f"result file {files.result} is not a synthetic-set file; move it away or pick "
                              "another --save_path")
        done = len(data)
        if not isinstance(content.get("config"), Mapping):  # e.g. the paper code's: its settings are unknown
            if done >= cfg.num_exp:
                return None
            raise UserError(f"{files.result} holds {done} of {cfg.num_exp} experiments but records no settings "
                            "to continue with; pick another --save_path")
        differ = _differences(content["config"], content.get("seed"), cfg, ignore=("num_exp",))
        if done > cfg.num_exp:
            differ.append(("num_exp", done, cfg.num_exp))
        note = ("; a finished experiment cannot be continued to more iterations: its optimizer state is not "
                "kept, so the set would differ from one made that long in one go"
                if any(key == "iterations" for key, _, _ in differ) else "")
        more, more_note = _execution_differences(content, execution, cfg, differ)
        if differ or more:
            raise SettingsDiffer(files.result, differ + more, note + more_note)
        if done == cfg.num_exp:
            return None
        accs = {name: list(values) for name, values in (content.get("accs_all_exps") or {}).items()}
        return RunState(exp=done, accs_all_exps=accs, data=[list(entry) for entry in data]), int(content["seed"])
    return RunState(), resolve_seed(cfg.seed)
