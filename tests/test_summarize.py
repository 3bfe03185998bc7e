"""summarize.py: one table of a folder of runs — ours (settings inside the files), the paper code's (settings in
the folder names, numpy floats inside), validate.py reports; seeds collapse into one row; unreadable files
are skipped with one warning line each."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import summarize
import validate
from methods.DC_DSA_DM import main_DM as dm_cli
from utils.cli import run_cli
from utils.results import settings_from_path

PAPER_COS = Path("condensed/CIFAR10/DC/IPC10/CLoM/cos_distance/CIFAR100->CIFAR10/"
                 "MP['ConvNet', 'ResNet18BN_AP']_Nm[2]_Epoch[150]/alphas['ConvNet', 'ResNet18BN_AP']->[1000.0, 10.0]")


def paper_result(path: Path, accs: list[float], experiments: int = 1) -> Path:
    """A result file as the paper code writes it: numpy floats, no settings inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [[torch.zeros(10, 3, 32, 32), torch.arange(10)] for _ in range(experiments)]
    torch.save({"data": data, "accs_all_exps": {"ConvNet": [np.float64(a) for a in accs]}}, path)
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two seeds of one DM setting and one of another (ours), a paper-code CLoM result and a plain one, a
    validate.py report, and two unreadable files."""
    root = tmp_path_factory.mktemp("sweep")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fast = ["--dataset", "Digits", "--ipc", "1", "--Iteration", "1", "--batch_real", "8", "--num_eval", "2",
                "--epoch_eval_train", "1", "--gpu", "cpu"]
        sets = {}
        for seed, iterations in ((0, "1"), (1, "1"), (0, "0")):
            save = root / f"runs/it{iterations}/seed{seed}"
            argv = [*fast, "--random_seed", str(seed), "--Iteration", iterations, "--save_path", str(save)]
            assert run_cli(lambda a, key=(seed, iterations): sets.__setitem__(key, dm_cli.main(a)), argv) == 0
        argv = ["--dataset", "Digits", "--normalize_data", "--model", "ConvNetW32", "--synthesis_data_path",
                str(sets[0, "1"]), "--epochs", "1", "--num_eval", "2", "--random_seed", "4", "--gpu", "cpu"]
        assert run_cli(validate.main, argv) == 0
    finally:
        torch.set_num_threads(threads)
    paper_result(root / "paper" / PAPER_COS / "res_DC_CIFAR10_ConvNet_10ipc.pt", [0.5, 0.7, 0.6, 0.8], 2)
    paper_result(root / "paper/condensed/SVHN/DM/IPC50/original_method/res_DM_SVHN_ResNet18BN_AP_50ipc.pt",
                 [0.25])
    (root / "paper/res_broken.pt").write_bytes(b"not a torch file")
    (root / "runs/validate_garbage.json").write_text("{")
    return root


def table(capsys, *argv) -> tuple[list[dict], str]:
    """Run summarize.py; its Markdown table as dicts (header -> cell) and its stderr."""
    assert run_cli(summarize.main, list(argv)) == 0
    captured = capsys.readouterr()
    lines = [line.strip().strip("|").split("|") for line in captured.out.strip().splitlines()]
    header = [cell.strip() for cell in lines[0]]
    assert set(lines[1]) == {" --- "}
    return [dict(zip(header, (cell.strip() for cell in cells))) for cells in lines[2:]], captured.err


def test_settings_from_the_paper_code_folders():
    settings = settings_from_path(PAPER_COS / "res_DC_CIFAR10_ConvNet_10ipc.pt")
    assert settings == {"method": "DC", "dataset": "CIFAR10", "model": "ConvNet", "ipc": 10, "clom.distance": "cos",
                        "clom.source_dataset": "CIFAR100", "clom.models_pool": ["ConvNet", "ResNet18BN_AP"],
                        "clom.model_num": 2, "clom.epoch": 150, "clom.alphas": [1000.0, 10.0]}
    plain = settings_from_path(Path("x/ImageNet-32/DM/IPC1/original_method/res_DM_ImageNet-32_ResNet18BN_AP_1ipc.pt"))
    assert plain == {"method": "DM", "dataset": "ImageNet-32", "model": "ResNet18BN_AP", "ipc": 1}


def test_markdown_table_collapses_seeds_and_warns_once_per_unreadable_file(sweep, capsys):
    rows, err = table(capsys, str(sweep))
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: skipping ") for line in warnings)
    assert any("res_broken.pt" in line for line in warnings) and any("validate_garbage" in line for line in warnings)
    by = {(r["data set"], r["method"], r["evaluation"], r["other settings"]): r for r in rows}
    assert len(rows) == 5, rows
    two_seeds = by["Digits", "DM", "in run", "iterations=1"]
    assert two_seeds["runs"] == "2" and two_seeds["exps × nets"] == "2 × 2" and two_seeds["CLoM"] == "none"
    assert two_seeds["ipc"] == "1" and two_seeds["model"] == "ConvNet" and two_seeds["wall time"].endswith(" s")
    mean, std = (float(v) for v in two_seeds["ConvNet acc. (%)"].split(" ± "))
    assert 0 <= mean <= 100 and std >= 0
    assert by["Digits", "DM", "in run", "iterations=0"]["runs"] == "1"
    checked = by["Digits", "DM", "validate.py 1 ep", "–"]
    assert checked["ConvNetW32 acc. (%)"] != "–" and checked["ConvNet acc. (%)"] == "–"
    assert checked["exps × nets"] == "1 × 2"
    paper = by["CIFAR10", "DC", "in run", "–"]
    assert (paper["CLoM"], paper["pool"], paper["source"], paper["α"]) == (
        "cos", "ConvNet, ResNet18BN_AP ×2, ep 150", "CIFAR100", "1000, 10")
    assert paper["exps × nets"] == "2 × 2" and paper["ConvNet acc. (%)"] == "65.00 ± 11.18"
    assert paper["wall time"] == "–"
    assert by["SVHN", "DM", "in run", "–"]["model"] == "ResNet18BN_AP"


def test_filter_and_sort(sweep, capsys):
    rows, _ = table(capsys, str(sweep), "--filter", "dataset=digits", "--filter", "kind=run", "--sort=-iterations")
    assert [r["other settings"] for r in rows] == ["iterations=1", "iterations=0"]
    rows, _ = table(capsys, str(sweep), "--filter", "clom=cos", "--filter", "ipc=10.0")
    assert len(rows) == 1 and rows[0]["data set"] == "CIFAR10"
    for order in ("-convnet", "ipc,-convnet"):
        rows, _ = table(capsys, str(sweep), "--filter", "clom=none", f"--sort={order}")
        accs = [float(r["ConvNet acc. (%)"].split(" ± ")[0]) for r in rows if r["ConvNet acc. (%)"] != "–"]
        if order == "-convnet":
            assert accs == sorted(accs, reverse=True) and len(accs) == 3 and accs[0] == 25.0  # SVHN's
        else:
            assert [r["ipc"] for r in rows][-1] == "50" and accs[:2] == sorted(accs[:2], reverse=True)


def test_csv_and_json(sweep, capsys):
    assert run_cli(summarize.main, [str(sweep / "paper"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    cos = [r for r in rows if r["clom"] == "cos"][0]
    assert cos["experiments"] == "2" and cos["networks"] == "2" and cos["ConvNet n"] == "4"
    assert float(cos["ConvNet mean"]) == pytest.approx(65.0) and cos["wall_time_s"] == ""
    assert run_cli(summarize.main, [str(sweep / "runs"), "--format", "json", "--filter", "iterations=1",
                                    "--filter", "kind=run"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["runs"] == 2 and row["seeds"] == [0, 1] and row["networks"] == [2] and len(row["files"]) == 2
    assert row["accuracy"]["ConvNet"]["n"] == 4 and row["settings"]["iterations"] == 1
    assert "seed" not in row["settings"] and row["wall_time_s"] > 0


@pytest.mark.parametrize("argv, message", [
    (["missing_folder"], "missing_folder"),
    (["{root}", "--filter", "nonsense=1"], "nonsense"),
    (["{root}", "--filter", "ipc"], "KEY=VALUE"),
    (["{root}", "--sort", "nonsense"], "nonsense"),
    (["{root}", "--format", "xml"], "--format"),
])
def test_bad_input_is_one_line(sweep, capsys, argv, message):
    argv = [arg.replace("{root}", str(sweep / "paper")) for arg in argv]
    assert run_cli(summarize.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]


def test_ior_and_hlr_columns_where_validate_measured_them(tmp_path, capsys):
    """Two seeds' validate.py reports with --random_real/--full_data and one without: one row, the gaps pooled
    over the reports that have them (in points); no IOR/HLR columns when no report has them."""
    base = {"model": "ConvNet", "dataset": "Digits", "method": "DM", "ipc": 10, "epochs": 300, "dsa": True,
            "settings_of_the_set": {"method": "DM", "dataset": "Digits", "ipc": 10, "model": "ConvNet"}}
    reports = [
        {**base, "seed": 0, "final": [0.9, 0.8], "ior": {"values": [0.1, 0.3]}, "hlr": {"values": [0.05, 0.15]}},
        {**base, "seed": 1, "final": [0.7, 0.6], "ior": {"values": [0.2, 0.2]}},
        {**base, "seed": 2, "final": [0.5]},
    ]
    for k, report in enumerate(reports):
        (tmp_path / f"validate_ConvNet_seed{k}.json").write_text(json.dumps(report))
    [row], _ = table(capsys, str(tmp_path))
    assert row["ConvNet acc. (%)"] == "70.00 ± 14.14" and row["runs"] == "3"
    assert row["IOR (points)"] == f"+20.00 ± {np.std([10, 30, 20, 20]):.2f}" and row["HLR (points)"] == "+10.00 ± 5.00"
    assert run_cli(summarize.main, [str(tmp_path), "--format", "json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["accuracy"]["ior"]["n"] == 4 and entry["accuracy"]["hlr"]["mean"] == pytest.approx(10.0)
    assert run_cli(summarize.main, [str(tmp_path), "--format", "csv"]) == 0
    [line] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert float(line["ior mean"]) == pytest.approx(20.0) and line["hlr n"] == "2"
    (tmp_path / "validate_ConvNet_seed0.json").unlink()
    (tmp_path / "validate_ConvNet_seed1.json").unlink()
    [row], _ = table(capsys, str(tmp_path))
    assert "IOR (points)" not in row and "HLR (points)" not in row
