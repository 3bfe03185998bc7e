"""train_original_models.py and validate.py, run in-process as a user would (on the bundled Digits set)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sample_class

import train_original_models
import validate
from utils.cli import run_cli
from utils.data import get_dataset_spec, load_dataset
from utils.results import summarize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _train(*extra):
    argv = ["--dataset", "Digits", "--model", "ConvNetW32", "--num", "2", "--epochs", "2", "--batch_size", "128",
            "--random_seed", "0", "--normalize_data", *extra]
    return run_cli(train_original_models.main, argv)


def test_pool_training_layout_and_info(workdir):
    assert _train() == 0
    arch = workdir / "pretrained_model/Digits/original/ConvNetW32"
    for k in (0, 1):
        run = arch / f"index_{k}"
        for epoch in (1, 2):
            state = torch.load(run / f"Digits_ConvNetW32_original_epoch{epoch}.pth", weights_only=True)
            assert "classifier.weight" in state
        info = json.loads((run / "model_info.json").read_text())
        assert info["dataset"] == "Digits" and info["normalized"] is True and info["seed"] == k
        assert info["channel"] == 1 and info["im_size"] == [8, 8] and info["num_classes"] == 10
        assert set(info["test_acc"]) == {"1", "2"} and 0.0 <= info["test_acc"]["2"] <= 1.0
        assert info["wall_time_s"] > 0 and info["models_in_this_process"] == 2
    assert "test acc" in (arch / "train_index_0-1.log").read_text()
    # A second run never overwrites: it takes the next free indexes.
    assert _train("--epochs", "1") == 0
    assert (arch / "index_2").is_dir() and (arch / "index_3").is_dir()
    assert (arch / "index_0" / "Digits_ConvNetW32_original_epoch2.pth").exists()


def test_pool_training_is_reproducible(workdir):
    assert _train("--num", "1", "--epochs", "1") == 0
    assert _train("--num", "1", "--epochs", "1") == 0
    arch = workdir / "pretrained_model/Digits/original/ConvNetW32"
    a = torch.load(arch / "index_0/Digits_ConvNetW32_original_epoch1.pth", weights_only=True)
    b = torch.load(arch / "index_1/Digits_ConvNetW32_original_epoch1.pth", weights_only=True)
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("argv, message", [
    (["--num", "0"], "--num"),
    (["--epochs", "-1"], "--epochs"),
    (["--dataset", "NoSuchSet"], "NoSuchSet"),
    (["--model", "NoSuchNet"], "NoSuchNet"),
    (["--lr_decay_step", "5,x"], "--lr_decay_step"),
    (["--dataset", "CIFAR10", "--data_path", "missing_dir", "--no_download"], "missing_dir"),
    (["--save_root", "a_file"], "a_file"),
])
def test_pool_training_bad_input(workdir, capsys, argv, message):
    (workdir / "a_file").write_text("not a folder")
    assert _train(*argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert "Traceback" not in err[0]


def _real_subset_file(path: Path, paper_format: bool):
    data = load_dataset("Digits")
    gen = torch.Generator().manual_seed(0)
    images = torch.cat([sample_class(data.train, c, 10, gen) for c in range(10)])
    labels = torch.arange(10).repeat_interleave(10)
    accs = {"ConvNet": [np.float64(0.5), np.float32(0.25)]} if paper_format else {"ConvNet": [0.5]}
    torch.save({"data": [[images, labels]], "accs_all_exps": accs}, path)
    return path


@pytest.mark.parametrize("paper_format", [False, True])
def test_validate_real_subset(workdir, capsys, paper_format):
    path = _real_subset_file(workdir / "res.pt", paper_format)
    argv = ["--normalize_data", "--dataset", "Digits", "--model", "ConvNetW32", "--dsa", "--synthesis_data_path",
            str(path), "--epochs", "20", "--save_every", "10", "--lr_decay_step", "15", "--num_eval", "2",
            "--random_seed", "0", "--save_model"]
    assert run_cli(validate.main, argv) == 0
    out = capsys.readouterr().out
    assert "final" in out and "best" in out
    log = (workdir / "validate_ConvNetW32.log").read_text()
    final_line = [line for line in log.splitlines() if "2 networks" in line][0]
    mean_final = float(final_line.split("final test acc ")[1].split(" ±")[0])
    assert mean_final > 50.0  # ten real digits per class train a net far above chance (10%)
    saved = sorted((workdir / "pretrained_model/Digits/DC/IPC10/ConvNetW32").glob("index_*/*.pth"))
    assert len(saved) == 2
    [report] = workdir.glob("validate_ConvNetW32_seed0.json")
    record = json.loads(report.read_text())
    assert len(record["final"]) == len(record["best"]) == 2 and record["test_evaluations"] == 2
    assert "optimistic" in record["best_is"] and record["wall_time_s"] > 0 and record["args"]["dsa"] is True
    assert record["seed"] == 0 and record["dataset"] == "Digits" and record["model"] == "ConvNetW32"


def test_validate_names_a_diverged_network(workdir, capsys):
    """A learning rate that sends the weights to NaN: the network's chance-level accuracy is flagged in the
    log and the report instead of passing as a property of the set; a sane rate flags nothing."""
    path = _real_subset_file(workdir / "res.pt", paper_format=False)
    base = ["--dataset", "Digits", "--model", "ConvNetW32", "--synthesis_data_path", str(path), "--epochs", "4",
            "--num_eval", "2", "--random_seed", "0"]
    assert run_cli(validate.main, [*base, "--lr", "1e30", "--result_json", "validate_big.json"]) == 0
    assert run_cli(validate.main, [*base, "--result_json", "validate_sane.json"]) == 0
    assert json.loads((workdir / "validate_big.json").read_text())["diverged_at_epoch"] == [4, 4]
    assert json.loads((workdir / "validate_sane.json").read_text())["diverged_at_epoch"] == [None, None]
    log = (workdir / "validate_ConvNetW32.log").read_text()
    assert "network 0 diverged" in log and "smaller --lr" in log and log.count("diverged:") == 2
    warnings = []
    summarize([workdir], warn=warnings.append)
    assert warnings == [f"{workdir / 'validate_big.json'}: 2 of 2 evaluation networks diverged (NaN/inf "
                        "weights); their chance-level accuracies are in the table"]


def test_validate_without_normalization_maps_the_set_to_pixel_space(workdir):
    # One real subset saved three ways: normalized (a synthetic set's default), already in pixel space
    # ("normalized": False), and normalized but labelled as pixels. Without --normalize_data validate must
    # map the first to pixel space, so it trains exactly the weights the second does; the third (taken as
    # is) shows that a missing mapping would change them.
    normalized = _real_subset_file(workdir / "res.pt", False)
    images, labels = torch.load(normalized, weights_only=True)["data"][0]
    spec = get_dataset_spec("Digits")
    mean, std = (torch.tensor(stats).view(1, -1, 1, 1) for stats in (spec.mean, spec.std))
    pixels, unmapped = workdir / "pixels.pt", workdir / "unmapped.pt"
    torch.save({"data": [[images * std + mean, labels]], "normalized": False}, pixels)
    torch.save({"data": [[images, labels]], "normalized": False}, unmapped)
    for path in (normalized, pixels, unmapped):
        argv = ["--dataset", "Digits", "--model", "ConvNetW32", "--synthesis_data_path", str(path), "--epochs", "2",
                "--save_every", "2", "--random_seed", "0", "--save_model", "--gpu", "cpu"]  # CPU: bit-exact
        assert run_cli(validate.main, argv) == 0
    runs = workdir / "pretrained_model/Digits/DC/IPC10/ConvNetW32"
    trained = [torch.load(next((runs / f"index_{k}").glob("*.pth")), weights_only=True) for k in range(3)]
    assert all(torch.equal(trained[0][key], trained[1][key]) for key in trained[0])
    assert not torch.equal(trained[0]["classifier.weight"], trained[2]["classifier.weight"])


@pytest.mark.parametrize("content, message", [
    (b"garbage", "not a PyTorch file"),
    ({"accs_all_exps": {}}, "not a synthetic-set file"),
    ({"data": [[torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)]]}, "(3, 32, 32)"),
    ({"data": [[torch.zeros(4, 1, 8, 8), torch.full((4,), 12)]]}, "labels outside"),
])
def test_validate_bad_files(workdir, capsys, content, message):
    path = workdir / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    argv = ["--dataset", "Digits", "--synthesis_data_path", str(path), "--epochs", "1"]
    assert run_cli(validate.main, argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_validate_missing_file_exits_nonzero_from_the_shell(workdir):
    cmd = [sys.executable, str(ROOT / "validate.py"), "--dataset", "Digits", "--synthesis_data_path", "nope.pt"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "nope.pt" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ IOR / HLR
def test_random_subset_indices_draw_per_class_counts_without_replacement():
    train = load_dataset("Digits").train
    per_class = [3, 0, 1, 5, 2, 2, 2, 2, 2, 4]
    idx = train.random_subset_indices(per_class, torch.Generator().manual_seed(1))
    labels = train.labels[idx]
    assert labels.tolist() == [c for c, n in enumerate(per_class) for _ in range(n)]  # class-major
    assert len(set(idx.tolist())) == len(idx)  # without replacement
    again = train.random_subset_indices(per_class, torch.Generator().manual_seed(1))
    other = train.random_subset_indices(per_class, torch.Generator().manual_seed(2))
    assert torch.equal(idx, again) and not torch.equal(idx, other)
    draws = torch.stack([train.random_subset_indices([1] * 10, torch.Generator().manual_seed(s)) for s in range(200)])
    assert all(len(set(column.tolist())) > 50 for column in draws.T)  # each class: many different images drawn
    with pytest.raises(ValueError, match="fewer than"):
        train.random_subset_indices([1000] * 10, torch.Generator().manual_seed(0))


def test_validate_reports_ior_and_hlr_with_the_same_evaluation(workdir):
    """--random_real K: the random subsets get the set's images per class, are drawn from the recorded seed, and
    are trained exactly as the set is: validating subset k as a set of its own gives the same accuracies.
    IOR and HLR pair evaluation network j with network j."""
    path = _real_subset_file(workdir / "res.pt", paper_format=False)
    common = ["--dataset", "Digits", "--model", "ConvNetW32", "--normalize_data", "--dsa", "--epochs", "6",
              "--save_every", "6", "--lr_decay_step", "3", "--num_eval", "2", "--random_seed", "0", "--gpu", "cpu"]
    assert run_cli(validate.main, [*common, "--synthesis_data_path", str(path), "--random_real", "2",
                                   "--random_real_seed", "7", "--full_data", "--result_json", "protocol.json"]) == 0
    record = json.loads((workdir / "protocol.json").read_text())
    real = record["random_real"]
    assert real["seed"] == 7 and real["subsets"] == 2 and real["images_per_class"] == [10] * 10
    assert len(real["final"]) == 2 and all(len(row) == 2 for row in real["final"])
    expected_ior = [s - r for row in real["final"] for s, r in zip(record["final"], row)]
    assert record["ior"]["values"] == pytest.approx(expected_ior, abs=1e-12)
    assert record["ior"]["mean"] == pytest.approx(np.mean(expected_ior)) and record["ior"]["std"] >= 0
    assert record["full_data"]["images"] == 1198 and len(record["full_data"]["final"]) == 2
    expected_hlr = [f - s for f, s in zip(record["full_data"]["final"], record["final"])]
    assert record["hlr"]["values"] == pytest.approx(expected_hlr, abs=1e-12)
    log = (workdir / "validate_ConvNetW32.log").read_text()
    assert "IOR = acc(set) - acc(random real)" in log and "HLR = acc(full) - acc(set)" in log

    # subset 1, drawn independently from the recorded seed and validated as a set of its own
    from utils.seeding import derive_seed

    data = load_dataset("Digits")
    idx = data.train.random_subset_indices([10] * 10, torch.Generator().manual_seed(derive_seed(7, "random real", 1)))
    torch.save({"data": [[data.train.images(idx), data.train.labels[idx]]]}, workdir / "subset1.pt")
    assert run_cli(validate.main, [*common, "--synthesis_data_path", str(workdir / "subset1.pt"),
                                   "--result_json", "subset1.json"]) == 0
    assert json.loads((workdir / "subset1.json").read_text())["final"] == real["final"][1]


def test_validate_refuses_random_real_larger_than_a_class(workdir, capsys):
    data = load_dataset("Digits")
    path = workdir / "big.pt"
    torch.save({"data": [[torch.zeros(2000, 1, 8, 8), torch.arange(10).repeat_interleave(200)]]}, path)
    assert run_cli(validate.main, ["--dataset", "Digits", "--synthesis_data_path", str(path), "--epochs", "1",
                                   "--random_real", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--random_real" in err[0] and str(int(data.train.class_counts()[0])) in err[0]


def test_a_saved_set_loads_as_the_fields_tools_read_one(workdir):
    """DC/DSA/DM/MTT code across the field reads `torch.load(f)['data'][-1]` as (images, labels)."""
    from methods.DC_DSA_DM import main as dc_cli

    result = dc_cli.main(["--dataset", "Digits", "--ipc", "2", "--Iteration", "1", "--num_eval", "0", "--num_exp",
                          "2", "--batch_real", "8", "--random_seed", "0", "--save_path", "out"])
    images, labels = torch.load(result)["data"][-1]
    assert images.shape == (20, 1, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.long and labels.tolist() == [c for c in range(10) for _ in range(2)]
