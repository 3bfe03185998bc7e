"""Where and how the work runs: device, torchrun process group, fast paths and numeric precision.

Resolved once by a script and passed down. Precision:
  fp32  full float32 everywhere (TF32 off for convolutions and matmuls)
  tf32  float32 storage, TF32 tensor-core convolutions and matmuls on CUDA (cuDNN's own default)
  bf16  as tf32, plus bfloat16 autocast of the forward passes
On a CPU tf32 means fp32 (there are no TF32 units); bf16 autocast works but is slow there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from utils.distributed import DistInfo
from utils.host_memory import keep_freed_host_memory

PRECISIONS = ("fp32", "tf32", "bf16")

# On a CPU a compiled function costs 17-36 s to build (2 cores, cold cache), then saves: DM's loss 45-48% of an
# iteration, DC's real side (one compiled call per class) 29%, its inner-loop SGD step 25% (benchmarks/
# bench_paper.py and bench_distill.py --device cpu). That pays after 15-175 iterations: distillations of at least
# this many iterations compile on a CPU, shorter ones (tests, the quickstart) stay eager.
CPU_COMPILE_MIN_ITERATIONS = 500
# Training networks on a CPU (pool, evaluation): a compiled SGD step costs 21-39 s to build and saves 35% of a
# step (Digits 8x8: 48 -> 33 ms, CIFAR 32x32: 0.33 -> 0.21 s per step of 100 images), so it pays after
# 350 (CIFAR) to 1300 (Digits) steps: trainings of at least this many steps (networks x epochs x batches) compile.
CPU_COMPILE_MIN_TRAINING_STEPS = 2000


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    fast: bool = False  # compiled training steps (CUDA graphs on CUDA)
    precision: str = "fp32"
    eager: bool = False  # --eager: no compiled path at all, on any device

    def compiles(self, iterations: int) -> bool:
        """Whether a distillation of `iterations` iterations takes the compiled paths: on CUDA with the fast
        paths; on a CPU when the run is long enough to repay compiling. A rule on the settings alone, so the
        same command takes the same path (and a seed reproduces its run)."""
        if self.eager:
            return False
        return self.fast or (self.device.type == "cpu" and iterations >= CPU_COMPILE_MIN_ITERATIONS)

    def compiles_training(self, steps: int) -> bool:
        """Whether training networks for `steps` SGD steps in all (networks x epochs x batches, over every
        torchrun process) takes the compiled step: on CUDA with the fast paths; on a CPU when there are enough
        steps to repay compiling."""
        if self.eager:
            return False
        return self.fast or (self.device.type == "cpu" and steps >= CPU_COMPILE_MIN_TRAINING_STEPS)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for precision bf16, else nothing. The scripts wrap a whole run in it, so its cache
        of casted weights is off: with it on, a weight trained in place inside the region kept its first
        bfloat16 copy, and the networks never learned."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()


def training_steps(networks: int, epochs: int, images: int, batch_size: int) -> int:
    return networks * epochs * -(-images // max(1, batch_size))


def fast_paths_note(runtime: Runtime, *, iterations: int | None = None, steps: int | None = None) -> str:
    """For a script's log: the fast paths on CUDA; on a CPU, whether this run compiles — a distillation of
    `iterations` iterations, or a training of `steps` SGD steps."""
    if runtime.eager or runtime.device.type != "cpu":
        return "on" if runtime.fast else "off"
    if iterations is not None:
        compiled, size, least = runtime.compiles(iterations), f"{iterations} iterations", CPU_COMPILE_MIN_ITERATIONS
    else:
        compiled, size, least = runtime.compiles_training(steps), f"{steps} SGD steps", CPU_COMPILE_MIN_TRAINING_STEPS
    if compiled:
        return f"compiled on the CPU ({size} repay compiling; --eager: never)"
    return f"off on the CPU ({size}; compiled from {least})"


def default_precision(device: torch.device) -> str:
    """tf32 on CUDA (cuDNN's own default, which every GPU figure in the README used), fp32 elsewhere. bf16 is
    faster but stays an option until its accuracy on Digits is measured equal to fp32's."""
    return "tf32" if device.type == "cuda" else "fp32"


def make_runtime(device: torch.device, dist: DistInfo | None = None, eager: bool = False,
                 precision: str | None = None) -> Runtime:
    """Fast paths on by default on CUDA (where they pay); on a CPU only runs long enough to repay compiling
    compile (Runtime.compiles, compiles_training); eager=True turns them all off. Applies the precision's
    TF32 switches and the host allocator's thresholds (utils/host_memory.py) process-wide."""
    keep_freed_host_memory()
    precision = precision or default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return Runtime(device, dist or DistInfo(), fast=device.type == "cuda" and not eager, precision=precision,
                   eager=eager)
