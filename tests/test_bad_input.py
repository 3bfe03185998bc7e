"""Bad input as a new user types it, across the four scripts and quickstart: every case exits with status 2
and one line on stderr (no traceback) that names the problem, and every file the user already had is
byte-identical afterwards; cases refused before starting create nothing at all.

The user's folder (a finished run, an unfinished one, a pool, synthetic sets good and damaged, damaged data
files, a regular file, an empty folder) is made once and copied for each case.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import quickstart
import train_original_models
import validate
from methods.DC_DSA_DM import main as dc_cli
from methods.DC_DSA_DM import main_DM as dm_cli
from utils.cli import run_cli
from utils.engine import build_seeded_network
from utils.io import pool_checkpoint_path

DISTILL = ["--dataset", "Digits", "--num_eval", "0", "--Iteration", "1", "--batch_real", "16", "--random_seed", "0"]
PREFIX = {
    "train": ["--dataset", "Digits", "--epochs", "1", "--batch_size", "512", "--random_seed", "0"],
    "validate": ["--dataset", "Digits", "--epochs", "1", "--synthesis_data_path", "set.pt", "--no_download"],
    "DC": DISTILL,
    "DM": DISTILL,
    "quickstart": [],
}
MAIN = {"train": train_original_models.main, "validate": validate.main, "DC": dc_cli.main, "DM": dm_cli.main,
        "quickstart": quickstart.main}
CLOM = ["--CLoM", "--models_pool", "ConvNet", "--alphas", "1"]
DONE = "done/original_method/res_DC_Digits_ConvNet_1ipc.pt"
HALF = "half/original_method/checkpoint_DC_Digits_ConvNet_1ipc.pt"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("library")
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    torch.set_num_threads(1)
    try:
        assert run_cli(dc_cli.main, [*DISTILL, "--save_path", "done"]) == 0  # a finished 1-iteration run
        assert run_cli(dc_cli.main, [*DISTILL, "--Iteration", "3", "--stop_after", "0", "--save_path", "half"]) == 0
        assert run_cli(train_original_models.main, [*PREFIX["train"], "--normalize_data"]) == 0  # index_0, epoch 1
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    images, labels = torch.load(root / DONE, weights_only=True)["data"][0]
    torch.save({"data": [[images, labels]]}, root / "set.pt")
    torch.save({"data": [[torch.full_like(images, float("nan")), labels]]}, root / "nan.pt")
    torch.save({"data": [[images, labels]], "extra": argparse.Namespace(a=1)}, root / "objects.pt")
    (root / "truncated.pt").write_bytes((root / "set.pt").read_bytes()[:200])
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "afile").write_text("a regular file\n")
    (root / "emptydir").mkdir()
    cifar = root / "randcifar/cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for k, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        (cifar / name).write_bytes(b"\x80\x02" + np.random.default_rng(k).bytes(5000))  # a pickle header, then noise
    # a pool whose weights are NaN (MNIST-shaped), and one that is not a state_dict file at all (SVHN)
    nan_pool = root / pool_checkpoint_path("MNIST", "ConvNet", 0, 1)
    nan_pool.parent.mkdir(parents=True)
    state = build_seeded_network("ConvNet", 1, 10, (28, 28), seed=0).state_dict()
    torch.save({key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
                for key, value in state.items()}, nan_pool)
    foreign_pool = root / pool_checkpoint_path("SVHN", "ConvNet", 0, 1)
    foreign_pool.parent.mkdir(parents=True)
    torch.save({"model": argparse.Namespace(a=1)}, foreign_pool)
    trunc = root / "trunc/original_method"  # an unfinished run whose only checkpoint is cut short
    trunc.mkdir(parents=True)
    (trunc / "checkpoint_DC_Digits_ConvNet_1ipc.pt").write_bytes((root / HALF).read_bytes()[:1000])
    return root


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return out


# case: (script, argv after the script's prefix, words its one error line must hold)
CASES = {
    # ---- methods/DC_DSA_DM/main.py (DC, DSA)
    "dc-save-path-uncreatable": ("DC", ["--save_path", "/proc/x"], ["--save_path", "/proc/x", "cannot create"]),
    "dc-save-path-is-a-file": ("DC", ["--save_path", "afile"], ["--save_path", "afile is a file"]),
    "dc-cache-gb-nan": ("DC", ["--CLoM_cache_gb", "nan"], ["--CLoM_cache_gb", "finite"]),
    "dc-cache-gb-negative": ("DC", ["--CLoM_cache_gb", "-1"], ["--CLoM_cache_gb", ">= 0"]),
    "dc-alphas-nan": ("DC", [*CLOM[:-1], "nan"], ["--alphas", "finite"]),
    "dc-alphas-word": ("DC", [*CLOM[:-1], "big"], ["--alphas", "expected a number"]),
    "dc-lr-img-nan": ("DC", ["--lr_img", "nan"], ["--lr_img", "finite"]),
    "dc-lr-img-negative": ("DC", ["--lr_img", "-0.1"], ["--lr_img", "> 0"]),
    "dc-lr-net-inf": ("DC", ["--lr_net", "inf"], ["--lr_net", "finite"]),
    "dc-gpu-word": ("DC", ["--gpu", "abc"], ["--gpu", "'abc'"]),
    "dc-seed-too-large": ("DC", ["--random_seed", "99999999999999999999999"], ["--random_seed", "2**63"]),
    "dc-seed-word": ("DC", ["--random_seed", "abc"], ["--random_seed", "whole number"]),
    "dc-iteration-word": ("DC", ["--Iteration", "abc"], ["--Iteration", "invalid int"]),
    "dc-unknown-flag": ("DC", ["--learning_rate", "0.1"], ["unrecognized arguments", "--learning_rate"]),
    "dc-ipc-zero": ("DC", ["--ipc", "0"], ["--ipc", ">= 1"]),
    "dc-num-exp-zero": ("DC", ["--num_exp", "0"], ["--num_exp", ">= 1"]),
    "dc-checkpoint-every-zero": ("DC", ["--checkpoint_every", "0"], ["--checkpoint_every", ">= 1"]),
    "dc-method-dm": ("DC", ["--method", "DM"], ["main_DM.py"]),
    "dc-clom-bad-distance": ("DC", [*CLOM, "--CLoM_distance", "bogus"], ["--CLoM_distance", "bogus"]),
    "dc-clom-unknown-pool-model": ("DC", ["--CLoM", "--models_pool", "NoNet", "--alphas", "1"], ["NoNet"]),
    "dc-clom-missing-epoch": ("DC", [*CLOM, "--epoch", "7"],
                              ["index_0", "holds epochs 1", "pass --epoch", "--epochs 7"]),
    "dc-clom-missing-index": ("DC", [*CLOM, "--epoch", "1", "--model_num", "2"],
                              ["index_1", "not found", "--num 1 --epochs 1"]),
    "dc-clom-nan-pool": ("DC", [*CLOM, "--epoch", "1", "--source_dataset", "MNIST", "--CLoM_distance", "cos"],
                         ["NaN or infinite weights", "diverged"]),
    "dc-clom-foreign-pool": ("DC", [*CLOM, "--epoch", "1", "--source_dataset", "SVHN", "--CLoM_distance", "cos"],
                             ["not readable", "argparse.Namespace"]),
    "dc-clom-alphas-count": ("DC", [*CLOM[:-1], "1", "2", "--epoch", "1"], ["--alphas", "2 values"]),
    "dc-result-exists": ("DC", ["--save_path", "done"], ["already exists", "--resume", "--save_path"]),
    "dc-checkpoint-exists": ("DC", ["--Iteration", "3", "--save_path", "half"], ["unfinished run", "--resume"]),
    "dc-resume-more-iterations-of-finished": ("DC", ["--Iteration", "5", "--save_path", "done", "--resume"],
                                              ["--Iteration was 1, now 5", "optimizer state"]),
    "dc-resume-other-lr": ("DC", ["--Iteration", "3", "--save_path", "half", "--resume", "--lr_img", "0.5"],
                           ["--lr_img was 0.1, now 0.5"]),
    "dc-resume-other-seed": ("DC", ["--Iteration", "3", "--save_path", "half", "--resume", "--random_seed", "4"],
                             ["--random_seed was 0, now 4"]),
    "dc-resume-other-evaluation": ("DC", ["--save_path", "done", "--resume", "--num_eval", "1", "--num_exp", "2"],
                                   ["--num_eval was 0, now 1"]),
    "dc-resume-truncated-checkpoint": ("DC", ["--Iteration", "3", "--save_path", "trunc", "--resume"],
                                       ["damaged", "truncated", "To start this run over, delete"]),
    "dc-missing-dataset": ("DC", ["--dataset", "MNIST", "--data_path", "emptydir", "--no_download"],
                           ["MNIST not found in emptydir"]),
    "dc-random-bytes-cifar": ("DC", ["--dataset", "CIFAR10", "--data_path", "randcifar"],
                              ["CIFAR10", "is damaged", "data_batch_1"]),
    "dc-unknown-dataset": ("DC", ["--dataset", "CIFAR11"], ["CIFAR11"]),
    # ---- methods/DC_DSA_DM/main_DM.py
    "dm-method-dc": ("DM", ["--method", "DC"], ["main.py"]),
    "dm-lr-img-nan": ("DM", ["--lr_img", "nan"], ["--lr_img", "finite"]),
    "dm-save-path-is-a-file": ("DM", ["--save_path", "afile/sub"], ["afile is a file"]),
    "dm-gpu-bad-card": ("DM", ["--gpu", "cuda:x"], ["--gpu"]),
    "dm-clom-bad-feature": ("DM", [*CLOM, "--CLoM_distance", "cos", "--CLoM_feature", "pixels"],
                            ["--CLoM_feature", "pixels"]),
    "dm-init-unknown": ("DM", ["--init", "zeros"], ["--init"]),
    # ---- train_original_models.py
    "train-lr-nan": ("train", ["--lr", "nan"], ["--lr", "finite"]),
    "train-lr-zero": ("train", ["--lr", "0"], ["--lr", "> 0"]),
    "train-momentum-one": ("train", ["--momentum", "1"], ["--momentum", "< 1"]),
    "train-weight-decay-negative": ("train", ["--weight_decay", "-0.001"], ["--weight_decay", ">= 0"]),
    "train-save-root-uncreatable": ("train", ["--save_root", "/proc/x"], ["--save_root", "/proc/x"]),
    "train-save-root-is-a-file": ("train", ["--save_root", "afile"], ["--save_root", "afile is a file"]),
    "train-gpu-word": ("train", ["--gpu", "abc"], ["--gpu"]),
    "train-multigpu-words": ("train", ["--multigpu", "x,y"], ["--multigpu", "card numbers"]),
    "train-epochs-word": ("train", ["--epochs", "ten"], ["--epochs", "invalid int"]),
    "train-num-zero": ("train", ["--num", "0"], ["--num", ">= 1"]),
    "train-random-bytes-cifar": ("train", ["--dataset", "CIFAR10", "--data_path", "randcifar"],
                                 ["is damaged (malformed or truncated)"]),
    "train-missing-dataset": ("train", ["--dataset", "FashionMNIST", "--data_path", "emptydir", "--no_download"],
                              ["FashionMNIST not found in emptydir"]),
    # ---- validate.py
    "validate-nan-set": ("validate", ["--synthesis_data_path", "nan.pt"], ["nan.pt", "NaN or infinite"]),
    "validate-objects-in-set": ("validate", ["--synthesis_data_path", "objects.pt"],
                                ["objects.pt", "not readable", "argparse.Namespace"]),
    "validate-truncated-set": ("validate", ["--synthesis_data_path", "truncated.pt"], ["damaged", "truncated"]),
    "validate-random-bytes-set": ("validate", ["--synthesis_data_path", "random.pt"], ["not a PyTorch file"]),
    "validate-missing-set": ("validate", ["--synthesis_data_path", "nope.pt"], ["nope.pt", "not found"]),
    "validate-set-is-a-folder": ("validate", ["--synthesis_data_path", "emptydir"], ["is a folder"]),
    "validate-lr-nan": ("validate", ["--lr", "nan"], ["--lr", "finite"]),
    "validate-epochs-negative": ("validate", ["--epochs", "-1"], ["--epochs", ">= 0"]),
    "validate-result-json-exists": ("validate", ["--result_json", "afile"], ["--result_json", "already exists"]),
    "validate-result-json-under-a-file": ("validate", ["--result_json", "afile/r.json"], ["afile is a file"]),
    "validate-experiment-missing": ("validate", ["--experiment", "3"], ["experiment 3 does not exist"]),
    "validate-gpu-word": ("validate", ["--gpu", "gpu0"], ["--gpu"]),
    "validate-ipc-zero": ("validate", ["--save_model", "--ipc", "0"], ["--ipc", ">= 1"]),
    "validate-no-set-given": ("validate", ["--synthesis_data_path"], ["--synthesis_data_path", "expected one"]),
    # ---- quickstart.py
    "quickstart-out-exists": ("quickstart", ["--out", "emptydir"], ["--out", "already exists"]),
    "quickstart-out-under-a-file": ("quickstart", ["--out", "afile/run"], ["--out", "afile is a file"]),
    "quickstart-alpha-nan": ("quickstart", ["--alpha", "nan"], ["--alpha", "finite"]),
    "quickstart-ipc-zero": ("quickstart", ["--ipc", "0"], ["--ipc", ">= 1"]),
    "quickstart-gpu-word": ("quickstart", ["--gpu", "abc"], ["--gpu"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, library, tmp_path, monkeypatch, capsys):
    script, argv, words = CASES[case]
    work = tmp_path / "w"
    shutil.copytree(library, work)
    monkeypatch.chdir(work)
    before = snapshot(work)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = run_cli(MAIN[script], [*PREFIX[script], *argv])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert snapshot(work) == before  # every file byte-identical, and nothing created


@pytest.mark.parametrize("data_path", ["emptydir", "data/MNIST"])
def test_failed_download_leaves_no_folders(library, tmp_path, monkeypatch, capsys, data_path):
    """torchvision makes <root>/MNIST/raw before it fails (offline): none of it, nor data/, stays behind."""
    import torchvision

    class OfflineMNIST:
        def __init__(self, root, download, **kwargs):
            (Path(root) / "MNIST/raw").mkdir(parents=True)
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Name or service not known")

    work = tmp_path / "w"
    shutil.copytree(library, work)
    monkeypatch.chdir(work)
    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    before = snapshot(work)
    assert run_cli(dc_cli.main, [*DISTILL, "--dataset", "MNIST", "--data_path", data_path]) == 2
    line = capsys.readouterr().err.strip()
    assert "downloading it failed" in line and "\n" not in line
    assert snapshot(work) == before


def test_there_are_at_least_forty_cases_over_every_script():
    scripts = [script for script, _, _ in CASES.values()]
    assert len(CASES) >= 40 and set(scripts) == set(MAIN)
