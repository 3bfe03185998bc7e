"""A buffer.py run's progress on disk, so that a crash loses at most the experts being trained.

At its start a run reserves the file numbers it will write (MTT's rule: after the files already there) and
records its settings and seed in <buffer folder>/.in_progress/run.json. Every finished expert is saved at once
(atomically) as .in_progress/expert_<k>.pt; when the experts of one file are all there, the file is written
(replay_buffer_<n>.pt, never over an existing one, with its .json description first) and their partial files are
removed. `--resume` continues from what is on disk; expert k depends only on (seed, k), so the buffer ends the
same as an uninterrupted run's. The run holds the folder's lock from start to end.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from methods.MTT.replay_buffer import Expert, buffer_file, first_free_number, info_file, read_info
from utils.errors import UserError
from utils.io import DamagedFile, atomic_json_save, atomic_torch_save, safe_torch_load, to_plain

IN_PROGRESS = ".in_progress"


@dataclass(frozen=True)
class BufferPlan:
    """What a run writes: num_experts experts, save_interval per file, files numbered from first_number."""

    settings: dict  # the expert settings (they shape every expert)
    seed: int
    num_experts: int
    save_interval: int
    first_number: int

    def file_of(self, expert: int) -> int:
        return self.first_number + expert // self.save_interval

    def experts_of(self, number: int) -> list[int]:
        first = (number - self.first_number) * self.save_interval
        return list(range(first, min(first + self.save_interval, self.num_experts)))

    @property
    def numbers(self) -> list[int]:
        return list(range(self.first_number, self.file_of(self.num_experts - 1) + 1))


class BufferRun:
    """Reads and writes one run's progress in `folder` (the caller holds the folder's lock)."""

    def __init__(self, folder: Path, plan: BufferPlan):
        self.folder, self.plan = folder, plan
        self.state = folder / IN_PROGRESS

    # ---- starting
    @classmethod
    def start_or_resume(cls, folder: Path, settings: dict, seed: int | None, num_experts: int, save_interval: int,
                        resume: bool, new_seed) -> BufferRun:
        """The unfinished run in `folder` (with resume), or a new one after the files already there. `new_seed()`
        gives a new run's seed (the given one, or the clock's)."""
        run_json = folder / IN_PROGRESS / "run.json"
        if run_json.exists():
            saved = _read_run(run_json)
            plan = BufferPlan(saved["settings"], int(saved["seed"]), int(saved["num_experts"]),
                              int(saved["save_interval"]), int(saved["first_number"]))
            done = cls(folder, plan).finished_experts()
            if not resume:
                raise UserError(f"{folder} holds an unfinished buffer run ({len(done)} of {plan.num_experts} experts "
                                f"done, seed {plan.seed}): pass --resume with the same flags to continue it, or "
                                f"delete {folder / IN_PROGRESS} to drop it")
            now = {**settings, "num_experts": num_experts, "save_interval": save_interval}
            was = {**plan.settings, "num_experts": plan.num_experts, "save_interval": plan.save_interval}
            differ = [f"--{key} was {was.get(key)}, now {now.get(key)}" for key in now if was.get(key) != now.get(key)]
            if seed is not None and seed != plan.seed:
                differ.append(f"--random_seed was {plan.seed}, now {seed}")
            if differ:
                raise UserError(f"cannot resume the buffer run in {folder}: it was started with other settings "
                                f"({'; '.join(differ)}); pass the saved values")
            return cls(folder, plan)
        seed = int(new_seed())
        clash = [path.name for path in sorted(folder.glob("replay_buffer_*.pt"))
                 if (read_info(path) or {}).get("seed") == seed]
        if clash:
            raise UserError(f"{folder} already holds experts made with seed {seed} ({', '.join(clash)}): the same seed "
                            "makes the same experts; pick another --random_seed")
        plan = BufferPlan(dict(settings), seed, num_experts, save_interval, first_free_number(folder))
        run = cls(folder, plan)
        run.state.mkdir(parents=True, exist_ok=True)
        atomic_json_save(to_plain({"settings": plan.settings, "seed": plan.seed, "num_experts": num_experts,
                                   "save_interval": save_interval, "first_number": plan.first_number}),
                         run.state / "run.json")
        return run

    # ---- progress
    def partial(self, expert: int) -> Path:
        return self.state / f"expert_{expert}.pt"

    def file_is_ours(self, number: int) -> bool:
        """Whether replay_buffer_<number>.pt exists and is this run's (its description says so)."""
        path = buffer_file(self.folder, number)
        if not path.exists():
            return False
        info = read_info(path) or {}
        if info.get("seed") != self.plan.seed or info.get("experts") != self.plan.experts_of(number):
            raise UserError(f"{path} was written by another run while this one was interrupted; move it away "
                            "and --resume again")
        return True

    def finished_experts(self) -> list[int]:
        done = []
        for number in self.plan.numbers:
            experts = self.plan.experts_of(number)
            done += experts if self.file_is_ours(number) else [k for k in experts if self.partial(k).is_file()]
        return done

    def save_expert(self, expert: int, trajectory: Expert, test_acc: list[float], seed: int) -> Path | None:
        """Keep a finished expert; write its file once the file's experts are all there (returns its path)."""
        atomic_torch_save({"expert": trajectory, "test_acc": test_acc, "seed": seed}, self.partial(expert),
                          overwrite=True)
        number = self.plan.file_of(expert)
        experts = self.plan.experts_of(number)
        if not all(self.partial(k).is_file() for k in experts):
            return None
        saved = [safe_torch_load(self.partial(k), "partial expert") for k in experts]
        path = buffer_file(self.folder, number)
        info = {"format": "MTT replay buffer: a list of experts, each a list of epochs (the initial weights, then "
                "after every epoch), each a list of parameters in model.parameters() order",
                **self.plan.settings, "seed": self.plan.seed, "experts": experts,
                "expert_seeds": [s["seed"] for s in saved], "test_acc": [s["test_acc"] for s in saved],
                "torch_version": torch.__version__}
        atomic_json_save(to_plain(info), info_file(path), overwrite=True)
        atomic_torch_save([s["expert"] for s in saved], path)
        for k in experts:
            self.partial(k).unlink(missing_ok=True)
        return path

    def finish(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)


def _read_run(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DamagedFile(f"{path} is not readable ({err}); delete {path.parent} to drop the unfinished run") from None
    keys = {"settings", "seed", "num_experts", "save_interval", "first_number"}
    if not isinstance(saved, dict) or not keys <= set(saved):
        raise DamagedFile(f"{path} is not a buffer run's state; delete {path.parent} to drop the unfinished run")
    return saved
