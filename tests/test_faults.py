"""Faults a long run meets, and what it keeps: a second run into a busy folder, SIGKILL in the middle of a
checkpoint write, damaged checkpoints, a full disk (a file-size limit), a diverging pool, the umask of shared
folders, stale locks, and the resume rule (what may change when a run is continued)."""

from __future__ import annotations

import json
import os
import resource
import socket
import stat
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import train_original_models
import validate
from methods.DC_DSA_DM import main as dc_cli
from methods.DC_DSA_DM import main_DM as dm_cli
from utils.cli import run_cli
from utils.io import LOCK_NAME, FolderBusy, FolderLock, atomic_bytes_save, claim_run_dir, lock_holder

ROOT = Path(__file__).resolve().parents[1]
DM = ["--dataset", "Digits", "--ipc", "1", "--num_eval", "0", "--batch_real", "16", "--random_seed", "1"]
DC = ["--dataset", "Digits", "--method", "DC", "--ipc", "1", "--num_eval", "0", "--batch_real", "16",
      "--random_seed", "0"]
NAME = "DM_Digits_ConvNet_1ipc"


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def synthetic_set(folder: str, name: str = NAME) -> torch.Tensor:
    return torch.load(Path(folder) / "original_method" / f"res_{name}.pt", weights_only=True)["data"][0][0]


def script(path: str, *args: str, cwd: Path, limit_bytes: int | None = None, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    command = [sys.executable, *([str(ROOT / path)] if path.endswith(".py") else ["-c", path]), *args]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit if limit_bytes else None)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------ concurrency
def test_second_run_into_a_busy_folder_is_refused_and_the_first_finishes_intact(workdir, capsys):
    first = script("methods/DC_DSA_DM/main_DM.py", *DM, "--Iteration", "25", "--save_path", "shared", cwd=workdir,
                   wait=False)
    lock = workdir / "shared/original_method" / LOCK_NAME
    deadline = time.time() + 240
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert lock.exists(), first.communicate()
    # the same command with another seed, a moment later
    status = run_cli(dm_cli.main, [*DM, "--Iteration", "25", "--save_path", "shared", "--random_seed", "2"])
    line = one_line(capsys.readouterr().err)
    assert status == 2 and "in use by another run" in line and f"pid {first.pid} on {socket.gethostname()}" in line
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    # the first run's result is its own: the set it makes alone, its seed, its log only; the lock is gone
    assert run_cli(dm_cli.main, [*DM, "--Iteration", "25", "--save_path", "alone"]) == 0
    assert torch.equal(synthetic_set("shared"), synthetic_set("alone"))
    assert torch.load(f"shared/original_method/res_{NAME}.pt", weights_only=True)["seed"] == 1
    assert "seed 2" not in (workdir / f"shared/original_method/log_{NAME}.txt").read_text()
    assert not lock.exists()


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def write_lock(folder: Path, **info) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).unlink(missing_ok=True)
    atomic_bytes_save(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "time": "then",
                                  "command": "old run", **info}).encode(), folder / LOCK_NAME)


def test_index_folders_are_claimed_once_and_a_crashed_reservation_is_reused(workdir):
    pool = workdir / "pool"
    (pool / "index_0").mkdir(parents=True)
    busy = FolderLock(pool / "index_0").acquire()  # being trained by a live process (this one)
    write_lock(pool / "index_1")  # reserved by a run killed before it wrote anything
    write_lock(pool / "index_2")
    (pool / "index_2/model_info.json").write_text("{}")  # ...or after: kept as it is
    claims = [claim_run_dir(pool) for _ in range(2)]
    assert [k for k, _, _ in claims] == [1, 3]
    assert all(lock_holder(folder)["pid"] == os.getpid() for _, folder, _ in claims)
    for _, _, lock in [*claims, (0, None, busy)]:
        lock.release()
    assert lock_holder(pool / "index_2") is None and (pool / "index_2/model_info.json").exists()


def test_stale_lock_of_a_killed_run_is_taken_over_but_not_a_live_or_foreign_one(workdir):
    folder = workdir / "run"
    lock_file = folder / LOCK_NAME
    write_lock(folder)
    with FolderLock(folder):  # the dead pid's lock is stale: taken over
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):  # a live owner (here: this process)
            FolderLock(folder).acquire()
    assert not lock_file.exists()
    write_lock(folder, pid=os.getpid(), started="not when this process started")  # a recycled pid: stale too
    FolderLock(folder).acquire().release()
    write_lock(folder, host="another-host")  # a lock from another machine cannot be checked: kept, and named
    with pytest.raises(FolderBusy, match="another-host.*delete"):
        FolderLock(folder).acquire()


def test_pool_loader_says_when_a_pool_model_is_still_being_trained(workdir, capsys):
    index = workdir / "pretrained_model/Digits/original/ConvNet/index_0"
    index.mkdir(parents=True)
    with FolderLock(index):
        assert run_cli(dc_cli.main, [*DC, "--Iteration", "1", "--CLoM", "--models_pool", "ConvNet", "--alphas",
                                     "1"]) == 2
    assert "is still being trained" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------ crashes
KILL_DURING_THIRD_CHECKPOINT = """
import os, signal, sys
from utils import io
real, writes = io._write_file, []
def dying(data, path, overwrite):
    if path.name.startswith("checkpoint_"):
        writes.append(path)
        if len(writes) == 3:  # half the bytes reach the disk, then the process is killed
            fd, tmp = io._temp_file(path.parent, path.name)
            os.write(fd, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    return real(data, path, overwrite)
io._write_file = dying
from methods.DC_DSA_DM import main_DM
from utils.cli import run_cli
sys.exit(run_cli(main_DM.main, sys.argv[1:]))
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one_which_resumes_exactly(workdir):
    argv = [*DM, "--Iteration", "5", "--checkpoint_every", "1", "--save_path", "killed"]
    status, _, err = script(KILL_DURING_THIRD_CHECKPOINT, *argv, cwd=workdir)
    assert status == -9, err
    folder = workdir / "killed/original_method"
    assert list(folder.glob(".*.tmp")) and (folder / LOCK_NAME).exists()  # a half-written file, a dead owner
    assert torch.load(folder / f"checkpoint_{NAME}.prev.pt", weights_only=True)["next_iteration"] == 2
    assert run_cli(dm_cli.main, [*argv, "--resume"]) == 0
    assert run_cli(dm_cli.main, [*DM, "--Iteration", "5", "--save_path", "straight"]) == 0
    assert torch.equal(synthetic_set("killed"), synthetic_set("straight"))
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith((".", "checkpoint"))) == []


def test_damaged_checkpoint_falls_back_to_the_previous_one_or_says_how_to_start_over(workdir, capsys):
    argv = [*DC, "--Iteration", "4", "--checkpoint_every", "1", "--save_path", "cut"]
    assert run_cli(dc_cli.main, [*argv, "--stop_after", "1"]) == 0
    folder = workdir / "cut/original_method"
    newest = folder / "checkpoint_DC_Digits_ConvNet_1ipc.pt"
    assert (folder / "checkpoint_DC_Digits_ConvNet_1ipc.prev.pt").is_file()
    newest.write_bytes(newest.read_bytes()[:1500])  # truncated
    capsys.readouterr()
    assert run_cli(dc_cli.main, [*argv, "--resume"]) == 0
    assert "continuing from the previous checkpoint" in capsys.readouterr().out
    assert run_cli(dc_cli.main, [*argv, "--save_path", "straight"]) == 0
    name = "DC_Digits_ConvNet_1ipc"
    assert torch.equal(synthetic_set("cut", name), synthetic_set("straight", name))
    # both damaged: a dead end no more — the message says what is wrong and how to start over
    assert run_cli(dc_cli.main, [*argv, "--save_path", "both", "--stop_after", "1"]) == 0
    for path in (workdir / "both/original_method").glob("checkpoint_*"):
        path.write_bytes(path.read_bytes()[:700])
    before = {p.name: p.read_bytes() for p in (workdir / "both/original_method").iterdir()}
    assert run_cli(dc_cli.main, [*argv, "--save_path", "both", "--resume"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "is damaged: it is truncated" in line and "To start this run over, delete" in line
    assert {p.name: p.read_bytes() for p in (workdir / "both/original_method").iterdir()} == before


def test_full_disk_is_one_line_and_loses_nothing_written_before(workdir):
    argv = [*DM, "--Iteration", "3", "--checkpoint_every", "1", "--save_path", "full"]
    assert run_cli(dm_cli.main, [*argv, "--stop_after", "0"]) == 0
    folder = workdir / "full/original_method"
    checkpoint = (folder / f"checkpoint_{NAME}.pt").read_bytes()
    png = (folder / f"vis_{NAME}_exp0_iter0.png").read_bytes()
    # files may grow to 6000 bytes: the log, settings and PNGs fit, a checkpoint (~8 KB) does not
    status, _, err = script("methods/DC_DSA_DM/main_DM.py", *argv, "--resume", cwd=workdir, limit_bytes=6000)
    line = one_line(err)
    assert status == 2 and "cannot write" in line and "File too large" in line and "--resume" in line
    assert (folder / f"checkpoint_{NAME}.prev.pt").read_bytes() == checkpoint  # the last good one, intact
    assert (folder / f"vis_{NAME}_exp0_iter0.png").read_bytes() == png
    assert not list(folder.glob(".*"))  # no temp file, no lock
    assert run_cli(dm_cli.main, [*argv, "--resume"]) == 0  # room again: it finishes as if never stopped
    assert run_cli(dm_cli.main, [*DM, "--Iteration", "3", "--save_path", "straight"]) == 0
    assert torch.equal(synthetic_set("full"), synthetic_set("straight"))


def test_pool_training_that_diverges_stops_and_keeps_the_saved_epochs(workdir, monkeypatch, capsys):
    real_save = train_original_models.atomic_torch_save

    def save_then_diverge(state, path, **kwargs):  # once epoch 1 is saved, the model's weights turn NaN
        real_save(state, path, **kwargs)
        with torch.no_grad():
            next(iter(state.values())).fill_(float("nan"))  # a state_dict shares the model's tensors

    monkeypatch.setattr(train_original_models, "atomic_torch_save", save_then_diverge)
    argv = ["--dataset", "Digits", "--epochs", "3", "--batch_size", "512", "--random_seed", "0", "--normalize_data"]
    assert run_cli(train_original_models.main, argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "index_0 became non-finite" in line and "after epoch 2" in line and "epochs [1]" in line
    index = workdir / "pretrained_model/Digits/original/ConvNet/index_0"
    saved = torch.load(index / "Digits_ConvNet_original_epoch1.pth", weights_only=True)
    assert all(torch.isfinite(value).all() for value in saved.values())
    assert not (index / "Digits_ConvNet_original_epoch2.pth").exists() and not (index / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------ permissions
def test_every_output_gets_the_users_umask(workdir):
    old = os.umask(0o027)  # a lab's shared folder: the group reads, others nothing
    try:
        assert run_cli(dm_cli.main, [*DM, "--Iteration", "1", "--save_path", "out"]) == 0
        assert run_cli(train_original_models.main, ["--dataset", "Digits", "--epochs", "1", "--batch_size", "512",
                                                    "--random_seed", "0"]) == 0
        result = next(workdir.glob("out/original_method/res_*.pt"))
        assert run_cli(validate.main, ["--dataset", "Digits", "--synthesis_data_path", str(result), "--epochs", "1",
                                       "--save_model", "--random_seed", "0"]) == 0
    finally:
        os.umask(old)
    files = [p for p in workdir.rglob("*") if p.is_file()]
    assert len(files) >= 10
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o640" for p in files}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in workdir.rglob("*") if p.is_dir()} == {"0o750"}


# ------------------------------------------------------------------------------------------ the resume rule
def test_resume_may_extend_an_unfinished_run_or_add_experiments_and_ends_as_a_straight_run(workdir, capsys):
    # an unfinished run continued to more iterations than first asked: the set of a straight longer run
    assert run_cli(dc_cli.main, [*DC, "--Iteration", "2", "--save_path", "grow", "--stop_after", "0"]) == 0
    assert run_cli(dc_cli.main, [*DC, "--Iteration", "3", "--save_path", "grow", "--resume"]) == 0
    assert run_cli(dc_cli.main, [*DC, "--Iteration", "3", "--save_path", "three"]) == 0
    name = "DC_Digits_ConvNet_1ipc"
    assert torch.equal(synthetic_set("grow", name), synthetic_set("three", name))
    # a finished run asked for more experiments: the new ones are added, the old one kept as it was
    assert run_cli(dc_cli.main, [*DC, "--Iteration", "3", "--save_path", "three", "--resume", "--num_exp", "2"]) == 0
    assert run_cli(dc_cli.main, [*DC, "--Iteration", "3", "--save_path", "two", "--num_exp", "2"]) == 0
    grown = torch.load(f"three/original_method/res_{name}.pt", weights_only=True)["data"]
    straight = torch.load(f"two/original_method/res_{name}.pt", weights_only=True)["data"]
    assert len(grown) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(grown, straight))
    # ...but not shortened below the iteration a checkpoint reached
    assert run_cli(dc_cli.main, [*DC, "--Iteration", "5", "--save_path", "short", "--stop_after", "2"]) == 0
    capsys.readouterr()
    assert run_cli(dc_cli.main, [*DC, "--Iteration", "2", "--save_path", "short", "--resume"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--Iteration was 5, now 2" in line and "iteration reached (3)" in line


@pytest.mark.parametrize("first, then, named", [
    ([], ["--eager"], "--eager was off, now on"),
    (["--eager"], [], "--eager was on, now off"),
    ([], ["--precision", "bf16"], "--precision was fp32, now bf16"),
], ids=["eager-on", "eager-off", "precision"])
def test_resume_refuses_another_precision_or_eager_naming_the_flag(workdir, capsys, first, then, named):
    # eager and compiled steps, and the precisions, round differently: continuing would not end as one run
    argv = [*DM, "--Iteration", "3", *first]
    assert run_cli(dm_cli.main, [*argv, "--save_path", "half", "--stop_after", "0"]) == 0
    assert run_cli(dm_cli.main, [*argv, "--save_path", "done"]) == 0
    capsys.readouterr()
    for folder, more in (("half", []), ("done", ["--num_exp", "2"])):  # a checkpoint; a finished result grown
        other = [*DM, "--Iteration", "3", *then, *more, "--save_path", folder, "--resume"]
        assert run_cli(dm_cli.main, other) == 2
        line = one_line(capsys.readouterr().err)
        assert named in line and "must be the saved ones" in line, line
    assert run_cli(dm_cli.main, [*argv, "--save_path", "half", "--resume"]) == 0  # the saved way: it continues


def test_resume_refuses_another_device_type(workdir, capsys, monkeypatch):
    # CPU and CUDA generators draw different numbers from one seed. The CUDA process is faked: the refusal
    # comes before anything runs on the device.
    from methods.DC_DSA_DM import flags
    from utils.runtime import make_runtime

    assert run_cli(dm_cli.main, [*DM, "--Iteration", "3", "--save_path", "half", "--stop_after", "0"]) == 0
    monkeypatch.setattr(flags, "start_process", lambda gpu, eager, precision: make_runtime(
        torch.device("cuda", 0), eager=eager, precision=precision))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a CUDA card")
    capsys.readouterr()
    assert run_cli(dm_cli.main, [*DM, "--Iteration", "3", "--save_path", "half", "--resume", "--gpu", "0"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--gpu was cpu, now cuda" in line and "--precision was fp32, now tf32" in line, line
    make_runtime(torch.device("cpu"))  # undo the TF32 switches the fake CUDA runtime set


def test_resume_refuses_iterations_that_switch_the_cpu_compile_rule(workdir, capsys):
    # on a CPU 400 iterations run eager and 500 compile: the continued part would round unlike the saved one
    assert run_cli(dc_cli.main, [*DC, "--Iteration", "400", "--save_path", "half", "--stop_after", "0"]) == 0
    capsys.readouterr()
    assert run_cli(dc_cli.main, [*DC, "--Iteration", "500", "--save_path", "half", "--resume"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--Iteration was 400, now 500" in line and "at least 500 iterations compiles" in line, line


def test_resume_on_another_card_or_torch_continues_and_says_it_may_round_differently(workdir, capsys, monkeypatch):
    from methods.DC_DSA_DM.run_state import Execution
    from utils.runtime import make_runtime

    # the card number is not recorded: cards of one type draw the same numbers from one seed
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a CUDA card")
    cards = [Execution.of(make_runtime(torch.device("cuda", k)), 1000) for k in (0, 1)]
    make_runtime(torch.device("cpu"))
    assert cards[0] == cards[1] and cards[0].device == "cuda" and cards[0].compiled
    assert cards[1].differences(asdict(cards[0]), (1000, 1000)) == []
    # another card model or torch version: continued, with a warning; on the same machine the set is the same
    argv = [*DM, "--Iteration", "3"]
    assert run_cli(dm_cli.main, [*argv, "--save_path", "moved", "--stop_after", "0"]) == 0
    checkpoint = workdir / f"moved/original_method/checkpoint_{NAME}.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["execution"] == asdict(Execution.of(make_runtime(torch.device("cpu")), 3))
    saved["execution"] = {**saved["execution"], "device_name": "another cpu", "torch_version": "0.0"}
    torch.save(saved, checkpoint)
    capsys.readouterr()
    assert run_cli(dm_cli.main, [*argv, "--save_path", "moved", "--resume"]) == 0
    assert "the device was another cpu, now cpu; torch was 0.0" in capsys.readouterr().out
    assert run_cli(dm_cli.main, [*argv, "--save_path", "straight"]) == 0
    assert torch.equal(synthetic_set("moved"), synthetic_set("straight"))
