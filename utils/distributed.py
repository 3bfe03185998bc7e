"""torchrun helpers: who am I, which share of the work is mine, gather and reduce. One process = no-ops."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from utils.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    enabled: bool = False
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> DistInfo:
    """Join the process group that torchrun describes in the environment (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("CLOM_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        torch_dist.init_process_group(backend=backend)
    return DistInfo(True, rank, world, local_rank)


def init_with_device(gpu: str) -> tuple[DistInfo, torch.device]:
    """The scripts' start: join torchrun's group (if any) and pick this process's device."""
    dist = init()
    return dist, device_for_rank(dist, gpu) if dist.enabled else resolve_device(gpu)


def device_for_rank(dist: DistInfo, gpu: str) -> torch.device:
    """Under torchrun each process takes the card of its local rank (or the CPU)."""
    if str(gpu).lower() == "cpu" or not torch.cuda.is_available() or torch_dist.get_backend() == "gloo":
        return torch.device("cpu")
    if dist.local_rank >= torch.cuda.device_count():
        raise UserError(f"local rank {dist.local_rank} has no GPU: only {torch.cuda.device_count()} visible")
    return resolve_device(dist.local_rank)


def split_range(n: int, dist: DistInfo) -> list[int]:
    """This rank's contiguous share of range(n) (sizes differ by at most one)."""
    base, extra = divmod(n, dist.world)
    start = dist.rank * base + min(dist.rank, extra)
    return list(range(start, start + base + (1 if dist.rank < extra else 0)))


def barrier(dist: DistInfo) -> None:
    if dist.enabled:
        torch_dist.barrier()


def broadcast_object(dist: DistInfo, obj):
    """Rank 0's (picklable) object everywhere."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_int(dist: DistInfo, value: int) -> int:
    """Rank 0's value everywhere (e.g. a clock-based seed)."""
    return int(broadcast_object(dist, value))


def gather_objects(dist: DistInfo, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.enabled:
        return [obj]
    out = [None] * dist.world
    torch_dist.all_gather_object(out, obj)
    return out


def all_reduce_sum_(dist: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    if dist.enabled:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def multigpu_notice(multigpu: str | None) -> str | None:
    """The paper's --multigpu wrapped models in DataParallel, which splits every batch across cards. The flag
    is kept but not that path: torchrun splits whole models, evaluation networks and classes across processes
    instead (DataParallel was not benchmarked here)."""
    if not multigpu:
        return None
    return (f"--multigpu {multigpu}: one process drives one GPU (--gpu); to use several GPUs run the same "
            "command under `torchrun --nproc_per_node N` (see README)")


def resolve_device(gpu: str | int | None = 0) -> torch.device:
    """CUDA card `gpu` when CUDA is present, else the CPU. `gpu` may be an int, '0', 'cpu' or 'cuda:1'."""
    text = str(gpu if gpu is not None else 0).strip().lower()
    if text == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if text.startswith("cuda"):
        text = text.split(":", 1)[1] if ":" in text else "0"
    first = text.split(",")[0]
    if not first.isdigit():
        raise UserError(f"--gpu must be a card number such as 0 (or 'cpu'), got {gpu!r}")
    index = int(first)
    if index >= torch.cuda.device_count():
        raise UserError(f"--gpu {index}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", index)
