"""utils/host_memory.py: make_runtime raises glibc malloc's thresholds, so a freed large block is reused
without being faulted in again; CLOM_KEEP_FREED_MEMORY=0 leaves malloc as it is."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                 reason="glibc's mallopt only")

# After make_runtime, five forward + backward passes of a small ConvNet on 64 images of 3x32x32 (activations of
# 1-8 MiB, freed every pass); prints the minor page faults per pass.
PROBE = textwrap.dedent("""
    import json, resource, torch
    from utils.runtime import make_runtime
    make_runtime(torch.device("cpu"))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 128, 3, padding=1), torch.nn.GroupNorm(128, 128), torch.nn.ReLU(),
                              torch.nn.AvgPool2d(2), torch.nn.Conv2d(128, 128, 3, padding=1), torch.nn.Flatten(),
                              torch.nn.Linear(128 * 16 * 16, 10))
    x = torch.randn(64, 3, 32, 32)
    def one_pass():
        net(x).square().sum().backward()
    one_pass()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        one_pass()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"faults_per_pass": faults / 5}))
""")


def probe(switch: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CLOM_KEEP_FREED_MEMORY"}
    if switch is not None:
        env["CLOM_KEEP_FREED_MEMORY"] = switch
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_linux
def test_make_runtime_keeps_freed_blocks_for_reuse():
    kept, default = probe(None), probe("0")
    # Measured on glibc 2.36: about 78 000 faults per pass with malloc's defaults (blocks above its mmap threshold
    # are mapped afresh and faulted in page by page each pass), about 3 200 kept.
    assert default["faults_per_pass"] > 20000
    assert kept["faults_per_pass"] < default["faults_per_pass"] / 5


def test_the_switch_and_other_platforms_leave_malloc_alone(monkeypatch):
    from utils import host_memory

    monkeypatch.setattr(host_memory, "_state", {})
    monkeypatch.setenv("CLOM_KEEP_FREED_MEMORY", "0")
    assert host_memory.keep_freed_host_memory() is False
    monkeypatch.setattr(host_memory, "_state", {})
    monkeypatch.delenv("CLOM_KEEP_FREED_MEMORY")
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert host_memory.keep_freed_host_memory() is False
