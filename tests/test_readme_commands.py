"""The README's commands as the README writes them, run on tiny CIFAR-format data sets in a temp dir.

The commands are read from README.md's ```bash blocks: the pool training, the two CLoM distillations (ce,
cos), the validation, the DM command and MTT's two (buffer, distill with CLoM).
Only flags that shorten a run are appended (argparse keeps the last
value): fewer epochs and iterations, ipc 1, one evaluation network, the pool epoch that exists. An edited
README command is therefore run as edited, and one that does not run fails here.
"""

import re
import shlex
from pathlib import Path

import pytest
import torch
from conftest import write_cifar10, write_cifar100

import train_original_models
import validate
from methods.DC_DSA_DM import main as dc_main
from methods.DC_DSA_DM import main_DM as dm_main
from methods.MTT import buffer as mtt_buffer
from methods.MTT import distill as mtt_distill
from utils.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
# ipc 1 (one outer step, one inner epoch) instead of 10 keeps the CPU run to seconds; everything else as written
SHORT_DISTILL = ["--ipc", "1", "--epoch", "1", "--Iteration", "1", "--num_eval", "1", "--epoch_eval_train", "1",
                 "--random_seed", "0", "--no_download"]


def bash_lines(text: str) -> list[str]:
    """The command lines of the ```bash blocks of a Markdown text (comments dropped)."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        lines += [line.split(" #")[0].strip() for line in block.splitlines() if line.strip()]
    return lines


def readme_commands(text: str) -> dict[str, str]:
    """The paper's four commands and the DM command, found in the README's bash blocks by what they run."""
    wanted = {
        "train": lambda c: c.startswith("python train_original_models.py "),
        "ce": lambda c: c.startswith("python methods/DC_DSA_DM/main.py ") and "--CLoM_distance ce " in c,
        "cos": lambda c: c.startswith("python methods/DC_DSA_DM/main.py ") and "--CLoM_distance cos " in c,
        "validate": lambda c: c.startswith("python validate.py "),
        "dm": lambda c: c.startswith("python methods/DC_DSA_DM/main_DM.py "),
        "buffer": lambda c: c.startswith("python methods/MTT/buffer.py "),
        "mtt": lambda c: c.startswith("python methods/MTT/distill.py "),
    }
    found = {}
    for line in bash_lines(text):
        for name, matches in wanted.items():
            if name not in found and matches(line):
                found[name] = line
    missing = sorted(set(wanted) - set(found))
    assert not missing, f"README.md has no bash command for {missing}"
    return found


COMMANDS = readme_commands((ROOT / "README.md").read_text())


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
    train = COMMANDS["train"]
    # 1. pools: the README trains 10 CIFAR10 ConvNets; the cos command needs a CIFAR100 one (one epoch each)
    assert run_cli(train_original_models.main, command(train, "--num", "1", "--epochs", "1", "--no_download")) == 0
    assert run_cli(train_original_models.main, command(train, "--num", "1", "--epochs", "1", "--dataset",
                                                       "CIFAR100", "--no_download")) == 0
    assert Path("pretrained_model/CIFAR10/original/ConvNet/index_0/CIFAR10_ConvNet_original_epoch1.pth").exists()
    assert Path("pretrained_model/CIFAR100/original/ConvNet/index_0/CIFAR100_ConvNet_original_epoch1.pth").exists()

    # 2. the two CLoM commands, and DM
    results = {}
    for name, main in (("ce", dc_main.main), ("cos", dc_main.main), ("dm", dm_main.main)):
        assert run_cli(lambda argv, key=name, main=main: results.__setitem__(key, main(argv)),
                       command(COMMANDS[name], *SHORT_DISTILL)) == 0, name
    source = {"ce": "CIFAR10", "cos": "CIFAR100"}
    for name in ("ce", "cos"):
        expected = (Path("condensed/CIFAR10/DC/IPC1/CLoM") / f"{name}_distance" / f"{source[name]}->CIFAR10"
                    / "MP['ConvNet']_Nm[1]_Epoch[1]" / "alphas['ConvNet']->[1000.0]" / "res_DC_CIFAR10_ConvNet_1ipc.pt")
        assert Path(results[name]) == expected
    assert Path(results["dm"]).parts[:4] == ("condensed", "CIFAR10", "DM", "IPC1")
    for name, path in results.items():
        content = torch.load(path, weights_only=True)
        images, labels = content["data"][0]
        assert images.shape == (10, 3, 32, 32) and torch.isfinite(images).all(), name
        assert torch.equal(labels, torch.arange(10))
        assert len(content["accs_all_exps"]["ConvNet"]) == 1

    # 3. validate the CE set
    argv = [str(results["ce"]) if arg == "<specified_path>" else arg for arg in command(COMMANDS["validate"])]
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


def test_readme_mtt_commands(workdir, monkeypatch):
    """MTT's buffer then distill with CLoM (the experts as the pool), as written, shortened: 2 experts x 2 epochs,
    ipc 1, 2 student steps, 2 iterations, no evaluation."""
    monkeypatch.chdir(workdir)
    shorter = ["--num_experts", "2", "--train_epochs", "2", "--save_interval", "2", "--batch_train", "16",
               "--no_download", "--random_seed", "0"]
    assert run_cli(mtt_buffer.main, command(COMMANDS["buffer"], *shorter)) == 0
    assert Path("buffers/CIFAR10/ConvNet/replay_buffer_0.pt").exists()
    experts = torch.load("buffers/CIFAR10/ConvNet/replay_buffer_0.pt", weights_only=True)
    assert len(experts) == 2 and len(experts[0]) == 3  # MTT's layout: experts x (epochs + 1) x parameters
    result = []
    short = ["--ipc", "1", "--syn_steps", "2", "--expert_epochs", "1", "--max_start_epoch", "1", "--Iteration", "2",
             "--num_eval", "0", "--CLoM_experts", "2", "--no_download", "--random_seed", "0"]
    assert run_cli(lambda argv: result.append(mtt_distill.main(argv)), command(COMMANDS["mtt"], *short)) == 0
    path = Path(result[0])
    assert path.parts[:4] == ("condensed", "CIFAR10", "MTT", "IPC1") and "cos_distance" in path.parts
    content = torch.load(path, weights_only=True)
    images, labels = content["data"][-1]
    assert images.shape == (10, 3, 32, 32) and torch.isfinite(images).all() and torch.equal(labels, torch.arange(10))
    assert len(content["syn_lr"]) == 1 and content["syn_lr"][0] > 0


# The paper's README, verbatim (its double space included): the README says its first four commands are these.
PAPER = {
    "train": "python train_original_models.py --normalize_data --dataset CIFAR10 --model ConvNet --num 10",
    "ce": "python methods/DC_DSA_DM/main.py --method DC --dataset CIFAR10 --model ConvNet --ipc 10 --CLoM "
          "--CLoM_distance ce --models_pool ConvNet --alphas 1000  --model_num 1 --epoch 150 --source_dataset CIFAR10 "
          "--CLoM_batch_size 8196",
    "cos": "python methods/DC_DSA_DM/main.py --method DC --dataset CIFAR10 --model ConvNet --ipc 10 --CLoM "
           "--CLoM_distance cos --models_pool ConvNet --alphas 1000  --model_num 1 --epoch 150 --source_dataset "
           "CIFAR100 --CLoM_batch_size 8196",
    "validate": "python validate.py --normalize_data --dataset CIFAR10 --model ConvNet --dsa --method DC --ipc 10 "
                "--synthesis_data_path <specified_path>",
}


def test_readme_commands_are_the_papers():
    assert {name: COMMANDS[name] for name in PAPER} == PAPER
    # parsed, they ask for the paper's runs
    ce = dc_main.get_args_parser().parse_args(command(COMMANDS["ce"]))
    assert (ce.method, ce.dataset, ce.model, ce.ipc, ce.CLoM, ce.CLoM_distance, ce.models_pool, ce.alphas,
            ce.model_num, ce.epoch, ce.source_dataset, ce.CLoM_batch_size) == (
        "DC", "CIFAR10", "ConvNet", 10, True, "ce", ["ConvNet"], [1000.0], 1, 150, "CIFAR10", 8196)
    cos = dc_main.get_args_parser().parse_args(command(COMMANDS["cos"]))
    assert (cos.CLoM_distance, cos.source_dataset, cos.ipc) == ("cos", "CIFAR100", 10)
    train = train_original_models.get_args_parser().parse_args(command(COMMANDS["train"]))
    assert (train.dataset, train.model, train.num, train.normalize_data, train.epochs) == ("CIFAR10", "ConvNet", 10,
                                                                                          True, 150)
    check = validate.get_args_parser().parse_args(command(COMMANDS["validate"]))
    assert check.dsa and check.normalize_data and check.synthesis_data_path == "<specified_path>"
    assert (check.dataset, check.model, check.method, check.ipc) == ("CIFAR10", "ConvNet", "DC", 10)
    dm = dm_main.get_args_parser().parse_args(command(COMMANDS["dm"]))
    assert (dm.method, dm.dataset, dm.ipc, dm.Iteration, dm.init) == ("DM", "CIFAR10", 50, 20000, "real")
    buffer = mtt_buffer.get_args_parser().parse_args(command(COMMANDS["buffer"]))
    assert (buffer.dataset, buffer.model, buffer.train_epochs, buffer.num_experts, buffer.zca) == (
        "CIFAR10", "ConvNet", 50, 100, True)
    mtt = mtt_distill.get_args_parser().parse_args(command(COMMANDS["mtt"]))
    assert (mtt.ipc, mtt.syn_steps, mtt.expert_epochs, mtt.max_start_epoch, mtt.lr_img, mtt.CLoM) == (
        10, 30, 2, 20, 1000, True)


def test_the_readme_commands_are_found_as_written():
    text = "```bash\npython validate.py --dsa   # a comment\npython train_original_models.py --num 3\n```\n" \
           "```bash\npython methods/DC_DSA_DM/main.py --CLoM_distance cos --x\n" \
           "python methods/DC_DSA_DM/main.py --CLoM_distance ce --y\npython methods/DC_DSA_DM/main_DM.py --ipc 5\n" \
           "python methods/MTT/buffer.py --zca\npython methods/MTT/distill.py --ipc 1\n```\n"
    found = readme_commands(text)
    assert found == {"validate": "python validate.py --dsa", "train": "python train_original_models.py --num 3",
                     "cos": "python methods/DC_DSA_DM/main.py --CLoM_distance cos --x",
                     "ce": "python methods/DC_DSA_DM/main.py --CLoM_distance ce --y",
                     "dm": "python methods/DC_DSA_DM/main_DM.py --ipc 5",
                     "buffer": "python methods/MTT/buffer.py --zca", "mtt": "python methods/MTT/distill.py --ipc 1"}
    with pytest.raises(AssertionError, match="dm"):
        readme_commands(text.replace("main_DM.py", "other.py"))
