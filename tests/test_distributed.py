"""The scripts under torchrun: 2 CPU processes (gloo) give the same files and numbers as one process.

Equal means bit for bit (torch.equal, ==) wherever each number is computed by the same operations in both:
pool models and evaluation networks are split whole across ranks (each trains exactly as alone), and a
class's matching loss moves only that class's images, so the all-reduced gradient is g + 0. The one stated
exception is CLoM under torchrun: every rank adds its 1/world share of the CLoM term, so an image's gradient
is summed as (g + c/2) + c/2 instead of g + c, which may round differently (float32: a few ulp).
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, args: list[str], cwd: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CLOM_BACKEND": "gloo"}
    if nproc == 1:
        cmd = [sys.executable, str(ROOT / script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(ROOT / script), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """The same 3-model pool trained by one process and by two."""
    out = {}
    for nproc in (1, 2):
        cwd = tmp_path_factory.mktemp(f"pool{nproc}")
        run_script("train_original_models.py", ["--dataset", "Digits", "--model", "ConvNetW32", "--num_models", "3",
                                                "--epochs", "2", "--random_seed", "5", "--normalize_data"],
                   cwd, nproc)
        out[nproc] = cwd / "pretrained_model/Digits/original/ConvNetW32"
    return out


def test_pool_training_two_ranks_equals_one(pools):
    one, two = pools[1], pools[2]
    assert sorted(p.name for p in two.glob("index_*")) == ["index_0", "index_1", "index_2"]
    for k in range(3):
        name = f"index_{k}/Digits_ConvNetW32_original_epoch2.pth"
        a, b = torch.load(one / name, weights_only=True), torch.load(two / name, weights_only=True)
        for key in a:
            assert torch.equal(a[key], b[key]), (k, key)


def _accuracies(log_text: str) -> list[float]:
    return [float(x) for x in re.findall(r"network \d+: final test acc ([0-9.]+)", log_text)]


def test_evaluation_two_ranks_equals_one(tmp_path):
    res = tmp_path / "res.pt"
    gen = torch.Generator().manual_seed(0)
    torch.save({"data": [[torch.randn(20, 1, 8, 8, generator=gen), torch.arange(10).repeat_interleave(2)]]}, res)
    args = ["--dataset", "Digits", "--model", "ConvNetW32", "--synthesis_data_path", str(res), "--epochs", "5",
            "--save_every", "5", "--num_eval", "3", "--random_seed", "1", "--normalize_data", "--dsa"]
    logs = {}
    for nproc in (1, 2):
        proc = run_script("validate.py", args, tmp_path, nproc)
        logs[nproc] = _accuracies(proc.stdout)
    assert len(logs[1]) == 3 and logs[1] == logs[2]


CLOM = ["--CLoM", "--CLoM_distance", "cos", "--models_pool", "ConvNetW32", "--alphas", "300", "--model_num", "1",
        "--epoch", "2", "--CLoM_batch_size", "0"]


@pytest.mark.parametrize("script, method_args", [
    ("methods/DC_DSA_DM/main.py", ["--method", "DSA", "--ipc", "2", "--Iteration", "2"]),
    ("methods/DC_DSA_DM/main_DM.py", ["--ipc", "3", "--Iteration", "3"]),
    ("methods/DC_DSA_DM/main_DM.py", ["--ipc", "3", "--Iteration", "3", *CLOM]),
], ids=["DSA", "DM", "DM+CLoM"])
def test_distillation_two_ranks_equals_one(tmp_path, pools, script, method_args):
    # Classes are sharded across ranks and the images' gradient all-reduced: the same synthetic set.
    args = ["--dataset", "Digits", *method_args, "--num_eval", "0", "--batch_real", "16", "--random_seed", "3",
            "--save_path", "out"]
    sets = {}
    for nproc in (1, 2):
        cwd = tmp_path / f"ranks{nproc}"
        cwd.mkdir()
        if "--CLoM" in args:  # the pool trained by one process (both runs read the same files)
            (cwd / "pretrained_model/Digits/original").mkdir(parents=True)
            (cwd / "pretrained_model/Digits/original/ConvNetW32").symlink_to(pools[1])
        run_script(script, args, cwd, nproc)
        results = list((cwd / "out").rglob("res_*.pt"))
        assert len(results) == 1
        sets[nproc] = torch.load(results[0], weights_only=True)["data"][0][0]
        assert list(results[0].parent.glob("vis_*.png")), "rank 0 writes the PNG grids"
    if "--CLoM" in args:  # each rank adds 1/world of CLoM: (g + c/2) + c/2 may round unlike g + c
        torch.testing.assert_close(sets[2], sets[1], atol=1e-5, rtol=1e-5)
        assert not torch.equal(sets[1], torch.zeros_like(sets[1]))
    else:
        assert torch.equal(sets[1], sets[2])
