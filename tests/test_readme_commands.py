"""The paper README's commands, as written, on tiny CIFAR-format data sets in a temp dir.

Each command is the README's text; only flags that shorten the run are appended (argparse keeps the last
value): fewer epochs and iterations, ipc 1, one evaluation network, and the pool epoch that exists.
"""

import shlex
from pathlib import Path

import pytest
import torch
from conftest import write_cifar10, write_cifar100

import train_original_models
import validate
from methods.DC_DSA_DM import main as dc_main
from utils.cli import run_cli

TRAIN = "python train_original_models.py --normalize_data --dataset CIFAR10 --model ConvNet --num 10"
CLOM_CE = ("python methods/DC_DSA_DM/main.py --method DC --dataset CIFAR10 --model ConvNet --ipc 10 --CLoM "
           "--CLoM_distance ce --models_pool ConvNet --alphas 1000  --model_num 1 --epoch 150 --source_dataset "
           "CIFAR10 --CLoM_batch_size 8196")
CLOM_COS = ("python methods/DC_DSA_DM/main.py --method DC --dataset CIFAR10 --model ConvNet --ipc 10 --CLoM "
            "--CLoM_distance cos --models_pool ConvNet --alphas 1000  --model_num 1 --epoch 150 --source_dataset "
            "CIFAR100 --CLoM_batch_size 8196")
VALIDATE = ("python validate.py --normalize_data --dataset CIFAR10 --model ConvNet --dsa --method DC --ipc 10 "
            "--synthesis_data_path <specified_path>")
# ipc 1 (one outer step, one inner epoch) instead of 10 keeps the CPU run to seconds; everything else as written
SHORT_DISTILL = ["--ipc", "1", "--epoch", "1", "--Iteration", "1", "--num_eval", "1", "--epoch_eval_train", "1",
                 "--random_seed", "0", "--no_download"]


def command(text: str, *extra: str) -> list[str]:
    """The flags of a README command line (after `python <script>`), plus `extra`."""
    return shlex.split(text)[2:] + list(extra)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    write_cifar10(root / "data/CIFAR10/cifar-10-batches-py")
    write_cifar100(root / "data/CIFAR100/cifar-100-python")
    return root


def test_readme_pipeline(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    # 1. pools: the README trains 10 CIFAR10 ConvNets; the cos command needs a CIFAR100 one (one epoch each)
    assert run_cli(train_original_models.main, command(TRAIN, "--num", "1", "--epochs", "1", "--no_download")) == 0
    assert run_cli(train_original_models.main, command(TRAIN, "--num", "1", "--epochs", "1", "--dataset",
                                                       "CIFAR100", "--no_download")) == 0
    assert Path("pretrained_model/CIFAR10/original/ConvNet/index_0/CIFAR10_ConvNet_original_epoch1.pth").exists()
    assert Path("pretrained_model/CIFAR100/original/ConvNet/index_0/CIFAR100_ConvNet_original_epoch1.pth").exists()

    # 2. the two CLoM commands
    results = {}
    for name, text in (("ce", CLOM_CE), ("cos", CLOM_COS)):
        assert run_cli(lambda argv, key=name: results.__setitem__(key, dc_main.main(argv)),
                       command(text, *SHORT_DISTILL)) == 0
    source = {"ce": "CIFAR10", "cos": "CIFAR100"}
    for name, path in results.items():
        expected = (Path("condensed/CIFAR10/DC/IPC1/CLoM") / f"{name}_distance" / f"{source[name]}->CIFAR10"
                    / "MP['ConvNet']_Nm[1]_Epoch[1]" / "alphas['ConvNet']->[1000.0]" / "res_DC_CIFAR10_ConvNet_1ipc.pt")
        assert Path(path) == expected
        content = torch.load(path, weights_only=True)
        images, labels = content["data"][0]
        assert images.shape == (10, 3, 32, 32) and torch.isfinite(images).all()
        assert torch.equal(labels, torch.arange(10))
        assert len(content["accs_all_exps"]["ConvNet"]) == 1

    # 3. validate the CE set
    argv = [str(results["ce"]) if arg == "<specified_path>" else arg for arg in command(VALIDATE)]
    argv += ["--epochs", "2", "--save_every", "1", "--no_download", "--random_seed", "0"]
    result = validate.main(argv)  # (validate's --ipc 10 only names a --save_model folder)
    assert len(result.final) == len(result.best) == len(result.best_epoch) == 1
    final, best, epoch = result.final[0], result.best[0], result.best_epoch[0]
    assert epoch in (1, 2) and best >= final and abs(20 * final - round(20 * final)) < 1e-9  # 20 test images
    # The log beside the set records the run as the README's flags ask for it, and the numbers returned.
    log = Path(results["ce"]).with_name("validate_ConvNet.log").read_text()
    assert "seed 0 | device " in log and "CIFAR10: 10 synthetic images, 20 test | normalized True | dsa True" in log
    assert f"network 0: final test acc {final:.4f} | max over 2 test evaluations {best:.4f} at epoch {epoch}" in log
    assert "(optimistic: chosen on the test set; report the final one)" in log


def test_readme_commands_parse_as_written():
    ce = dc_main.get_args_parser().parse_args(command(CLOM_CE))
    assert (ce.method, ce.ipc, ce.CLoM, ce.CLoM_distance, ce.models_pool, ce.alphas, ce.model_num, ce.epoch,
            ce.source_dataset, ce.CLoM_batch_size) == ("DC", 10, True, "ce", ["ConvNet"], [1000.0], 1, 150,
                                                       "CIFAR10", 8196)
    assert dc_main.get_args_parser().parse_args(command(CLOM_COS)).source_dataset == "CIFAR100"
    train = train_original_models.get_args_parser().parse_args(command(TRAIN))
    assert (train.num, train.normalize_data, train.epochs) == (10, True, 150)
    check = validate.get_args_parser().parse_args(command(VALIDATE))
    assert check.dsa and check.normalize_data and check.synthesis_data_path == "<specified_path>"
