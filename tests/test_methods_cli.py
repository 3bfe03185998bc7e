"""The DC / DSA / DM command lines end to end on Digits (offline, small): files and their layout, resume,
refusing to overwrite, bad input as one line, a non-finite loss, CLoM wiring."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import validate
from methods.DC_DSA_DM import config, flags, gradient_matching, run_state
from methods.DC_DSA_DM import main as dc_cli
from methods.DC_DSA_DM import main_DM as dm_cli
from utils.augment import DEFAULT_DSA_STRATEGY
from utils.cli import run_cli
from utils.errors import UserError
from utils.seeding import derive_seed

REPO = Path(__file__).resolve().parents[1]
FAST = ["--dataset", "Digits", "--batch_real", "16", "--epoch_eval_train", "2", "--random_seed", "0"]


@pytest.fixture(autouse=True)
def in_tmp_folder(tmp_path, monkeypatch):
    """Each test in its own working directory (default outputs go to ./condensed), one CPU thread: these
    networks are tiny and extra threads only contend."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def run(cli, *argv) -> int:
    return run_cli(cli.main, [*FAST, *argv])


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def check_layout(result: Path, ipc: int, eval_models: list[str], num_eval: int) -> dict:
    content = load(result)
    assert set(content) >= {"data", "accs_all_exps", "normalized", "config", "seed"}
    [[images, labels]] = content["data"]
    assert images.shape == (10 * ipc, 1, 8, 8) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert torch.equal(labels, torch.arange(10).repeat_interleave(ipc))  # class-major
    assert list(content["accs_all_exps"]) == eval_models
    for accs in content["accs_all_exps"].values():
        assert len(accs) == num_eval and all(type(a) is float and 0 <= a <= 1 for a in accs)
    assert content["normalized"] is True and content["seed"] == 0
    # what a sweep's summary needs: the settings, the flags that made them, and the wall time
    assert content["config"]["ipc"] == ipc and content["args"]["ipc"] == ipc and content["args"]["random_seed"] == 0
    assert isinstance(content["wall_time_s"], float) and content["wall_time_s"] > 0
    return content


# ------------------------------------------------------------------------------------------------ runs
def test_dc_run_writes_result_pngs_log_and_validates(tmp_path):
    assert run(dc_cli, "--method", "DC", "--ipc", "2", "--Iteration", "2", "--num_eval", "1") == 0
    folder = tmp_path / "condensed/Digits/DC/IPC2/original_method"
    result = folder / "res_DC_Digits_ConvNet_2ipc.pt"
    check_layout(result, ipc=2, eval_models=["ConvNet"], num_eval=1)
    assert (folder / "vis_DC_Digits_ConvNet_2ipc_exp0_iter0.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "vis_DC_Digits_ConvNet_2ipc_exp0_iter2.png").is_file()
    assert "loss" in (folder / "log_DC_Digits_ConvNet_2ipc.txt").read_text()
    assert '"seed": 0' in (folder / "args_DC_Digits_ConvNet_2ipc.json").read_text()
    assert not (folder / "checkpoint_DC_Digits_ConvNet_2ipc.pt").exists()  # removed once complete
    argv = ["--dataset", "Digits", "--synthesis_data_path", str(result), "--epochs", "2", "--num_eval", "1",
            "--normalize_data", "--random_seed", "0"]
    assert run_cli(validate.main, argv) == 0


def test_dc_batchnorm_model_is_evaluated_without_batchnorm_in_mode_s(tmp_path):
    assert run(dc_cli, "--model", "ConvNetBN", "--ipc", "1", "--Iteration", "1", "--num_eval", "1") == 0
    check_layout(tmp_path / "condensed/Digits/DC/IPC1/original_method/res_DC_Digits_ConvNetBN_1ipc.pt",
                 ipc=1, eval_models=["ConvNet"], num_eval=1)


def test_dsa_run(tmp_path):
    # num_eval 0: DSA evaluation always trains 1000 epochs (the paper's rule), too slow for a unit test.
    # --CLoM_distance without --CLoM does nothing.
    assert run(dc_cli, "--method", "DSA", "--ipc", "1", "--Iteration", "2", "--num_eval", "0",
               "--eval_mode", "SS", "--CLoM_distance", "cos") == 0
    folder = tmp_path / "condensed/Digits/DSA/IPC1/original_method"
    check_layout(folder / "res_DSA_Digits_ConvNet_1ipc.pt", ipc=1, eval_models=["ConvNet"], num_eval=0)
    assert (folder / "vis_DSA_Digits_ConvNet_1ipc_exp0_iter2.png").is_file()


def test_dm_run_two_experiments(tmp_path):
    assert run(dm_cli, "--ipc", "2", "--Iteration", "2", "--num_eval", "1", "--num_exp", "2") == 0
    folder = tmp_path / "condensed/Digits/DM/IPC2/original_method"
    content = load(folder / "res_DM_Digits_ConvNet_2ipc.pt")
    assert len(content["data"]) == 2 and len(content["accs_all_exps"]["ConvNet"]) == 2
    assert not torch.equal(content["data"][0][0], content["data"][1][0])  # each experiment its own seeds
    assert (folder / "vis_DM_Digits_ConvNet_2ipc_exp1_iter2.png").is_file()


def test_script_runs_from_another_working_directory(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "methods/DC_DSA_DM/main_DM.py"), *FAST, "--ipc", "1", "--Iteration", "1",
           "--num_eval", "0"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "condensed/Digits/DM/IPC1/original_method/res_DM_Digits_ConvNet_1ipc.pt").is_file()


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("cli, method", [(dc_cli, "DSA"), (dm_cli, "DM")])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, cli, method):
    common = ["--method", method, "--ipc", "2", "--Iteration", "3", "--num_eval", "0", "--checkpoint_every", "1"]
    assert run(cli, *common, "--save_path", "straight") == 0
    assert run(cli, *common, "--save_path", "resumed", "--stop_after", "1") == 0
    name, resumed = f"{method}_Digits_ConvNet_2ipc", tmp_path / "resumed/original_method"
    assert (resumed / f"checkpoint_{name}.pt").is_file()
    assert not (resumed / f"res_{name}.pt").exists()
    before = load(resumed / f"checkpoint_{name}.pt")["wall_time_s"]
    assert run(cli, *common, "--save_path", "resumed", "--resume") == 0
    straight_set = load(tmp_path / f"straight/original_method/res_{name}.pt")["data"][0][0]
    resumed_result = load(resumed / f"res_{name}.pt")
    assert torch.equal(straight_set, resumed_result["data"][0][0])
    assert resumed_result["wall_time_s"] > before > 0  # the wall time of both processes
    assert not (resumed / f"checkpoint_{name}.pt").exists()


def test_resume_refuses_other_settings_and_fresh_run_refuses_a_checkpoint(capsys):
    common = ["--method", "DC", "--ipc", "1", "--Iteration", "3", "--num_eval", "0", "--save_path", "out"]
    assert run(dc_cli, *common, "--stop_after", "0") == 0
    capsys.readouterr()
    assert run(dc_cli, *common) == 2
    assert "--resume" in one_error_line(capsys)
    assert run(dc_cli, *common, "--resume", "--lr_img", "0.5") == 2
    assert "lr_img" in one_error_line(capsys)
    assert run(dc_cli, *common, "--resume") == 0


# ------------------------------------------------------------------------------------------------ safety
def test_existing_result_is_never_overwritten(tmp_path, capsys):
    argv = ["--method", "DC", "--ipc", "1", "--Iteration", "0", "--num_eval", "0", "--save_path", "out"]
    assert run(dc_cli, *argv) == 0
    result = tmp_path / "out/original_method/res_DC_Digits_ConvNet_1ipc.pt"
    before = result.read_bytes()
    capsys.readouterr()
    assert run(dc_cli, *argv) == 2
    line = one_error_line(capsys)
    assert "already exists" in line and "--resume" in line and "--save_path" in line
    assert run(dc_cli, *argv, "--resume") == 0  # complete: nothing to do
    assert result.read_bytes() == before


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_set(tmp_path, monkeypatch, capsys):
    real_loss = gradient_matching.gradient_matching_loss
    calls = []

    def loss_that_explodes(model, real, syn, *labels, **options):
        calls.append(1)
        loss = real_loss(model, real, syn, *labels, **options)
        return loss if len(calls) == 1 else loss * float("nan")

    monkeypatch.setattr(gradient_matching, "gradient_matching_loss", loss_that_explodes)
    assert run(dc_cli, "--method", "DC", "--ipc", "1", "--Iteration", "5", "--num_eval", "0",
               "--save_path", "out") == 2
    line = one_error_line(capsys)
    assert "nan" in line and "iteration 1" in line
    checkpoint = load(tmp_path / "out/original_method/checkpoint_DC_Digits_ConvNet_1ipc.pt")
    assert checkpoint["next_iteration"] == 1 and torch.isfinite(checkpoint["images"]).all()
    assert not (tmp_path / "out/original_method/res_DC_Digits_ConvNet_1ipc.pt").exists()


@pytest.mark.parametrize("bad_from", [0, 3])
def test_non_finite_loss_found_later_keeps_exactly_the_set_before_it(tmp_path, monkeypatch, capsys, bad_from):
    """The loss is read only every 10 iterations: a loss that turns nan at iteration 3 is found at 10, and the
    checkpoint must still hold the set and momentum before iteration 3, as a clean run stopped there has them
    (at 0: the initial set, no momentum yet)."""
    from methods.DC_DSA_DM import distribution_matching

    common = ["--ipc", "2", "--Iteration", "12", "--num_eval", "0", "--init", "noise"]
    name = "checkpoint_DM_Digits_ConvNet_2ipc.pt"
    if bad_from:
        assert run(dm_cli, *common, "--save_path", "clean", "--stop_after", str(bad_from - 1)) == 0
        clean = load(tmp_path / "clean/original_method" / name)
    real_loss, calls = distribution_matching.distribution_matching_loss, []

    def loss_that_explodes(*args, **options):
        calls.append(1)
        loss = real_loss(*args, **options)
        return loss if len(calls) <= bad_from else loss * float("nan")

    monkeypatch.setattr(distribution_matching, "distribution_matching_loss", loss_that_explodes)
    capsys.readouterr()
    assert run(dm_cli, *common, "--save_path", "out") == 2
    line = one_error_line(capsys)
    assert "nan" in line and f"iteration {bad_from} " in line
    assert len(calls) == (11 if bad_from else 1)  # found at the first read (iterations 0, 10, ...), not at once
    checkpoint = load(tmp_path / "out/original_method" / name)
    assert checkpoint["next_iteration"] == bad_from and torch.isfinite(checkpoint["images"]).all()
    if bad_from:
        assert torch.equal(checkpoint["images"], clean["images"])
        assert torch.equal(checkpoint["optimizer_state"]["state"][0]["momentum_buffer"],
                           clean["optimizer_state"]["state"][0]["momentum_buffer"])
        assert checkpoint["optimizer_state"]["param_groups"] == clean["optimizer_state"]["param_groups"]
    else:
        assert checkpoint["optimizer_state"]["state"] == {}


@pytest.mark.parametrize("cli, argv, words", [
    (dc_cli, ["--ipc", "0"], "--ipc"),
    (dc_cli, ["--method", "DM"], "main_DM.py"),
    (dc_cli, ["--method", "XYZ"], "DC or DSA"),
    (dm_cli, ["--method", "DC"], "main.py"),
    (dc_cli, ["--eval_mode", "Q"], "eval_mode"),
    (dc_cli, ["--Iteration", "-1"], "--Iteration"),
    (dm_cli, ["--ipc", "500", "--init", "real"], "--init real"),
    (dc_cli, ["--model", "NoSuchNet"], "NoSuchNet"),
    (dc_cli, ["--dataset", "NoSuchSet"], "NoSuchSet"),
    (dc_cli, ["--dataset", "MNIST", "--data_path", "empty", "--no_download"], "empty"),
    (dc_cli, ["--init", "zeros"], "--init"),
    (dc_cli, ["--dis_metric", "l1"], "--dis_metric"),
    (dc_cli, ["--CLoM"], "--models_pool"),
    (dc_cli, ["--CLoM", "--models_pool", "ConvNet", "--alphas", "-5"], "--alphas must be >= 0"),
    (dm_cli, ["--CLoM", "--models_pool", "ConvNet", "ConvNetW32", "--alphas", "10", "-0.5"], "--alphas must be >= 0"),
])
def test_bad_input_is_one_line_and_nonzero_exit(cli, argv, words, capsys):
    assert run(cli, "--Iteration", "1", "--num_eval", "0", *argv) != 0
    assert words in one_error_line(capsys)


# ------------------------------------------------------------------------------------------------ CLoM
def _fake_pool(root: Path) -> None:
    from utils.engine import build_seeded_network
    from utils.io import pool_checkpoint_path

    path = root / pool_checkpoint_path("Digits", "ConvNet", 0, 150)
    path.parent.mkdir(parents=True)
    torch.save(build_seeded_network("ConvNet", 1, 10, (8, 8), seed=3).state_dict(), path)


@pytest.mark.parametrize("distance", ["ce", "cos"])
def test_clom_run_uses_the_paper_folder_names(tmp_path, distance):
    _fake_pool(tmp_path)
    assert run(dc_cli, "--method", "DC", "--ipc", "1", "--Iteration", "1", "--num_eval", "0", "--CLoM",
               "--CLoM_distance", distance, "--models_pool", "ConvNet", "--alphas", "10",
               "--CLoM_batch_size", "64") == 0
    folder = (tmp_path / "condensed/Digits/DC/IPC1/CLoM" / f"{distance}_distance" / "Digits->Digits"
              / "MP['ConvNet']_Nm[1]_Epoch[150]" / "alphas['ConvNet']->[10.0]")
    check_layout(folder / "res_DC_Digits_ConvNet_1ipc.pt", ipc=1, eval_models=["ConvNet"], num_eval=0)
    assert "CLoM" in (folder / "log_DC_Digits_ConvNet_1ipc.txt").read_text()


def test_clom_term_is_added_and_reseeded_from_seed_exp_iteration(monkeypatch):
    class RecordingLoss:
        def __init__(self):
            self.seeds, self.calls = [], 0

        def reseed(self, seed):
            self.seeds.append(seed)

        def __call__(self, image_syn, label_syn):
            self.calls += 1
            return image_syn.sum() * 0

        def describe(self):
            return "recording"

    term = RecordingLoss()
    monkeypatch.setattr(flags, "build_clom_loss", lambda *args: term)
    _fake_pool(Path.cwd())  # the pool's files are checked before the run starts
    assert run(dm_cli, "--ipc", "1", "--Iteration", "3", "--num_eval", "0", "--CLoM", "--models_pool", "ConvNet",
               "--alphas", "1") == 0
    assert term.calls == 3
    assert term.seeds == [derive_seed(0, "extra loss", 0, it) for it in range(3)]


def test_clom_run_resumes_exactly(tmp_path):
    _fake_pool(tmp_path)
    common = ["--method", "DC", "--ipc", "1", "--Iteration", "3", "--num_eval", "0", "--CLoM",
              "--CLoM_distance", "cos", "--models_pool", "ConvNet", "--alphas", "10", "--CLoM_batch_size", "64"]
    assert run(dc_cli, *common, "--save_path", "straight") == 0
    assert run(dc_cli, *common, "--save_path", "resumed", "--stop_after", "1") == 0
    assert run(dc_cli, *common, "--save_path", "resumed", "--resume") == 0
    sets = [load(next((tmp_path / folder).rglob("res_*.pt")))["data"][0][0] for folder in ("straight", "resumed")]
    assert torch.equal(*sets)


# ------------------------------------------------------------------------------------------------ pieces
def test_both_scripts_take_the_same_flags_with_the_papers_defaults():
    def options(parser):
        return {action.dest: action.default for action in parser._actions if action.dest != "help"}

    dc, dm = options(dc_cli.get_args_parser()), options(dm_cli.get_args_parser())
    assert dc.keys() == dm.keys()
    assert {k: dc[k] for k in ("method", "ipc", "eval_mode", "epoch_eval_train", "Iteration", "lr_img", "init",
                               "dsa_strategy")} == {"method": "DC", "ipc": 1, "eval_mode": "S",
                                                    "epoch_eval_train": 300, "Iteration": 1000, "lr_img": 0.1,
                                                    "init": "noise", "dsa_strategy": None}
    assert {k: dm[k] for k in ("method", "ipc", "eval_mode", "epoch_eval_train", "Iteration", "lr_img", "init",
                               "dsa_strategy")} == {"method": "DM", "ipc": 50, "eval_mode": "SS",
                                                    "epoch_eval_train": 1000, "Iteration": 20000, "lr_img": 1.0,
                                                    "init": "real",
                                                    "dsa_strategy": "color_crop_cutout_flip_scale_rotate"}


def _config(**overrides) -> config.DistillConfig:
    args = dc_cli.get_args_parser().parse_args([])
    for name, value in overrides.items():
        setattr(args, name, value)
    return flags.config_from_args(args)


def test_eval_pools_schedule_and_augmentation_follow_the_paper():
    assert config.eval_model_pool("S", "ConvNetBN") == ["ConvNet"]
    assert config.eval_model_pool("S", "ResNet18BN_AP") == ["ResNet18"]
    assert config.eval_model_pool("SS", "ConvNetBN") == ["ConvNetBN"]
    assert config.eval_model_pool("W", "ConvNet") == ["ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256"]
    with pytest.raises(UserError):
        config.eval_model_pool("X", "ConvNet")
    assert config.evaluation_iterations(_config(Iteration=1200)) == {0, 500, 1000, 1200}
    assert config.evaluation_iterations(_config(Iteration=1200, eval_mode="M")) == {1200}
    assert config.evaluation_iterations(_config(method="DM", Iteration=4000)) == {0, 2000, 4000}
    assert config.eval_augmentation(_config(), "CIFAR10", "ConvNet") == (None, 300)
    assert config.eval_augmentation(_config(), "MNIST", "ConvNet")[1] == 1000
    assert config.eval_augmentation(_config(), "CIFAR10", "ConvNetBN")[1] == 1000
    assert config.eval_augmentation(_config(method="DSA"), "CIFAR10", "ConvNet")[1] == 1000
    dm = _config(method="DM", epoch_eval_train=7, dsa_strategy="color_crop")
    assert dm.augmentation == "color_crop" and config.eval_augmentation(dm, "CIFAR10", "ConvNet")[1] == 7
    assert _config(method="DM", dsa_strategy="none").augmentation is None
    assert _config(method="DSA").augmentation == DEFAULT_DSA_STRATEGY


def test_save_folder_mirrors_the_paper_code():
    assert run_state.save_folder(_config(ipc=10), "CIFAR10") == Path("condensed/CIFAR10/DC/IPC10/original_method")
    assert run_state.save_folder(_config(save_path="runs/a"), "CIFAR10") == Path("runs/a/original_method")
    clom = _config(ipc=10, CLoM=True, CLoM_distance="cos", models_pool=["ConvNet", "AlexNet"],
                   alphas=[1000.0, 10.0], source_dataset="CIFAR100", dataset="CIFAR10")
    assert run_state.save_folder(clom, "CIFAR10") == Path(
        "condensed/CIFAR10/DC/IPC10/CLoM/cos_distance/CIFAR100->CIFAR10/MP['ConvNet', 'AlexNet']_Nm[1]_Epoch[150]"
        "/alphas['ConvNet', 'AlexNet']->[1000.0, 10.0]")


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "network", 0, 1) == derive_seed(0, "network", 0, 1)
    seeds = {derive_seed(s, "network", e, i) for s in (0, 1) for e in (0, 1) for i in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


def test_png_grid_enlarges_small_images_with_a_border():
    import io

    import numpy as np
    from PIL import Image

    from methods.DC_DSA_DM.synset import visualization_png
    from utils.data import load_dataset

    train = load_dataset("Digits").train
    images = train.sample_per_class(10, torch.Generator().manual_seed(0)).flatten(0, 1)
    grid = Image.open(io.BytesIO(visualization_png(images, train, ipc=10)))
    assert grid.size == (10 * 32 + 11 * 2, 10 * 32 + 11 * 2)  # 8x8 digits shown 32x32, 2-pixel borders
    pixels = torch.from_numpy(np.array(grid.convert("L"))).float()
    cell = pixels[2:34, 2:34]  # the first image: 4x4 blocks of one value (nearest-neighbour enlargement)
    assert torch.equal(cell, cell[::4, ::4].repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert (pixels[0:2, :] == 128).all() and (pixels[:, 34:36] == 128).all()  # the grey border
