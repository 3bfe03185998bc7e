"""Pools of frozen pre-trained models for CLoM: loading, input-space adapters, per-step draws.

A pool architecture is either one of ours (`ConvNet`, ...: `model_num` checkpoints index_0..index_{n-1}
written by train_original_models.py, each with its model_info.json) or a foundation model
(`timm:<name>`, `open_clip:<name>`, `torchvision:<name>`: one model from local weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

try:  # kornia is in requirements.txt; the formula is ITU-R 601 luminance either way
    from kornia.color import rgb_to_grayscale
except ImportError:  # pragma: no cover - depends on the environment

    def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
        return (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)

from networks import build_network, list_networks
from networks.foundation import FoundationModelError, build_foundation_model, is_foundation_name
from utils.data import get_dataset_spec
from utils.errors import UserError, one_line
from utils.io import (
    POOL_INFO_NAME,
    POOL_ROOT,
    describe_lock,
    load_json,
    load_state_dict_file,
    lock_holder,
    pool_arch_dir,
    pool_checkpoint_path,
    pool_run_dir,
)

# ---------------------------------------------------------------- input spaces and the adapter between them
from utils.log import get_logger


# ---------------------------------------------------------------- input spaces and the adapter between them
@dataclass(frozen=True)
class InputSpace:
    """How images are presented: channels, (H, W), and whether (and how) mean/std-normalized.
    normalized=False means raw pixels in [0, 1]."""

    channel: int
    im_size: tuple[int, int]
    normalized: bool
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def of(cls, images) -> InputSpace:
        """The space of a loaded split (utils.data.ImageSet): its shape and normalization."""
        channel, height, width = images.image_shape
        return cls(int(channel), (int(height), int(width)), bool(images.normalized),
                   tuple(float(v) for v in images.mean.tolist()), tuple(float(v) for v in images.std.tolist()))

    def same_pixel_scale(self, other: InputSpace) -> bool:
        if self.normalized != other.normalized:
            return False
        close = lambda a, b: len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b))
        return not self.normalized or (close(self.mean, other.mean) and close(self.std, other.std))


def input_space_from_info(info: dict) -> InputSpace:
    return InputSpace(
        int(info["channel"]),
        tuple(int(s) for s in info["im_size"]),
        bool(info["normalized"]),
        tuple(float(v) for v in info["mean"]),
        tuple(float(v) for v in info["std"]),
    )


class InputAdapter(nn.Module):
    """Differentiable map from target images to a pool model's input space:
    undo the target normalization -> 3->1 channels (ITU-R 601 luminance, kornia's rgb_to_grayscale) -> resize
    (bilinear, antialiased where a side shrinks) -> 1->3 channels (repeat) -> the model's normalization.
    Steps that change nothing are skipped.

    Antialiasing is torch's (F.interpolate(antialias=True), a triangle filter as in PIL), not kornia's
    resize(antialias=True) (a Gaussian blur first): on CPU the latter took 30-180x as long for the same
    images (benchmarks/bench_kornia.py), and the synthetic images go through this map at every step."""

    def __init__(self, source: InputSpace, dest: InputSpace):
        super().__init__()
        if source.channel != dest.channel and {source.channel, dest.channel} != {1, 3}:
            raise UserError(
                f"cannot feed {source.channel}-channel images to a pool model expecting "
                f"{dest.channel} channels (only 1<->3 is supported)"
            )
        self.source, self.dest = source, dest
        # Resizing commutes with per-channel affine maps: same channels and pixel scale -> resizing is all.
        self.rescale = source.channel != dest.channel or not source.same_pixel_scale(dest)
        self.resize = tuple(source.im_size) != tuple(dest.im_size)
        self.shrinks = any(d < s for s, d in zip(source.im_size, dest.im_size))
        self.register_buffer("src_mean", _stat(source.mean, source.normalized), persistent=False)
        self.register_buffer("src_std", _stat(source.std, source.normalized), persistent=False)
        self.register_buffer("dst_mean", _stat(dest.mean, dest.normalized), persistent=False)
        self.register_buffer("dst_std", _stat(dest.std, dest.normalized), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rescale and self.source.normalized:
            x = x * self.src_std.to(x) + self.src_mean.to(x)  # back to pixels in [0, 1]
        if self.rescale and self.source.channel == 3 and self.dest.channel == 1:
            x = rgb_to_grayscale(x)  # 0.299 R + 0.587 G + 0.114 B
        if self.resize:  # enlarging stays plain bilinear
            x = F.interpolate(x, size=self.dest.im_size, mode="bilinear", align_corners=False,
                              antialias=self.shrinks)
        if self.rescale and self.source.channel == 1 and self.dest.channel == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.rescale and self.dest.normalized:
            x = (x - self.dst_mean.to(x)) / self.dst_std.to(x)
        return x


def _stat(values, normalized: bool) -> torch.Tensor:
    return torch.tensor(values if normalized else [], dtype=torch.float32).view(1, -1, 1, 1)


def make_input_adapter(source: InputSpace, dest: InputSpace) -> nn.Module:
    """nn.Identity when the spaces match (no wasted ops), else an InputAdapter."""
    adapter = InputAdapter(source, dest)
    return nn.Identity() if not (adapter.rescale or adapter.resize) else adapter


# ---------------------------------------------------------------- the pool
@dataclass
class PoolMember:
    model: nn.Module  # frozen, eval mode, on the device
    input_space: InputSpace
    info: dict | None  # model_info.json; None for foundation models
    source: str  # checkpoint (or weights) it was loaded from
    num_classes: int | None  # None: a foundation model (embeddings only)


@dataclass
class PoolArch:
    architecture: str
    members: list[PoolMember]
    foundation: bool = False


def load_pool(
    source_dataset: str,
    architectures: list[str],
    model_num: int,
    epoch: int,
    device,
    root: str = POOL_ROOT,
    weights: dict[str, str] | None = None,
) -> list[PoolArch]:
    """Load every architecture's models (frozen, eval mode, on `device`). Model k is index_k."""
    check_pool(source_dataset, architectures, model_num, epoch, root, weights)
    weights = dict(weights or {})
    pool = []
    for name in architectures:
        if is_foundation_name(name):
            pool.append(PoolArch(name, [_load_foundation_member(name, weights.get(name), device)], True))
        else:
            members = [
                _load_member(source_dataset, name, k, model_num, epoch, device, root)
                for k in range(model_num)
            ]
            pool.append(PoolArch(name, members))
    return pool


def check_pool(
    source_dataset: str,
    architectures: list[str],
    model_num: int,
    epoch: int,
    root: str = POOL_ROOT,
    weights: dict[str, str] | None = None,
) -> None:
    """Everything about a pool that can be checked without loading it — names, and that every checkpoint
    file is there — so a run can refuse a bad pool before it creates anything."""
    if not architectures:
        raise UserError("--CLoM needs --models_pool: the pool architectures (e.g. --models_pool ConvNet)")
    if model_num < 1:
        raise UserError(f"--model_num must be >= 1, got {model_num}")
    for name in weights or {}:
        if name not in architectures:
            raise UserError(f"--CLoM_weights names {name!r}, which is not in --models_pool")
        if not is_foundation_name(name):
            raise UserError(
                f"--CLoM_weights is for foundation models (timm:/open_clip:/torchvision:<name>); "
                f"{name!r} is loaded from {root}/"
            )
    for name in architectures:  # fail on a bad name before reading any file
        if not is_foundation_name(name) and name not in list_networks():
            raise UserError(
                f"unknown pool architecture {name!r}; known: {', '.join(list_networks())}; "
                "or a foundation model timm:<name>, open_clip:<name>, torchvision:<name>"
            )
    for name in architectures:
        if not is_foundation_name(name):
            for k in range(model_num):
                if not pool_checkpoint_path(source_dataset, name, k, epoch, root).is_file():
                    raise UserError(_missing_pool_model(source_dataset, name, k, model_num, epoch, root))


def _missing_pool_model(dataset: str, arch: str, index: int, model_num: int, epoch: int, root: str) -> str:
    """Why pool model `index` at `epoch` is missing, and a command that makes exactly the missing ones
    (train_original_models.py writes to the first free index_<k> folders, in order)."""
    path = pool_checkpoint_path(dataset, arch, index, epoch, root)
    run_dir = pool_run_dir(dataset, arch, index, root)
    arch_dir = pool_arch_dir(dataset, arch, root)
    missing = [k for k in range(model_num) if not pool_run_dir(dataset, arch, k, root).exists()]
    save_root = "" if str(root) == POOL_ROOT else f" --save_root {root}"

    def command(count: int) -> str:
        return (f"python train_original_models.py --dataset {dataset} --model {arch} --num {count} --epochs {epoch} "
                f"--normalize_data{save_root}")

    if not run_dir.exists():
        others = f" and the {len(missing) - 1} other missing one(s)" if len(missing) > 1 else ""
        return f"pool model {path} not found; make it{others} with: {command(len(missing))}"
    holder = lock_holder(run_dir)
    if holder is not None:
        return (f"pool model {path} not found: {run_dir} is still being trained ({describe_lock(holder, run_dir)}); "
                "wait for it to finish")
    saved = sorted(int(f.stem.rsplit("epoch", 1)[1]) for f in run_dir.glob("*_original_epoch*.pth")
                   if f.stem.rsplit("epoch", 1)[1].isdigit())
    shown = ", ".join(map(str, saved[:10])) + (", ..." if len(saved) > 10 else "") if saved else "none"
    return (f"pool model {path} not found: {run_dir} holds epochs {shown} (its training stopped earlier or used "
            f"other --epochs/--save_every); pass --epoch with a saved one, or move {run_dir} out of {arch_dir} and "
            f"retrain with: {command(len(missing) + 1)}")


def _load_member(
    dataset: str, arch: str, index: int, model_num: int, epoch: int, device, root: str
) -> PoolMember:
    path = pool_checkpoint_path(dataset, arch, index, epoch, root)
    if not path.is_file():
        raise UserError(_missing_pool_model(dataset, arch, index, model_num, epoch, root))
    info_path = path.parent / POOL_INFO_NAME
    if info_path.is_file():
        info = load_json(info_path)
        try:
            space, num_classes = input_space_from_info(info), int(info["num_classes"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{info_path} is damaged: {one_line(err)} (expected the file "
                            "train_original_models.py writes)") from None
    else:  # e.g. a pool trained by the paper code: assume its README's --normalize_data
        spec = get_dataset_spec(dataset)
        info = None
        space = InputSpace(spec.channel, tuple(spec.im_size), True, tuple(spec.mean), tuple(spec.std))
        num_classes = spec.num_classes
        get_logger().warning(
            "%s has no %s; assuming %s images normalized with its mean/std",
            path.parent,
            POOL_INFO_NAME,
            dataset,
        )
    model = build_network(arch, space.channel, num_classes, space.im_size)
    try:
        model.load_state_dict(load_state_dict_file(path, "pool model"))
    except RuntimeError as err:
        raise UserError(
            f"pool model {path} does not fit {arch} ({space.channel}x{space.im_size[0]}x"
            f"{space.im_size[1]}, {num_classes} classes): {one_line(err)}"
        ) from None
    return PoolMember(_freeze(model, device), space, info, str(path), num_classes)


def _load_foundation_member(name: str, weights: str | None, device) -> PoolMember:
    try:
        model = build_foundation_model(name, weights)
    except FoundationModelError as err:  # its message gives the context, its cause the library's reason
        reason = "" if err.__cause__ is None else f": {one_line(err.__cause__)}"
        raise UserError(f"{err}{reason}") from None
    pre = model.preprocessing
    space = InputSpace(pre.channel, pre.im_size, True, pre.mean, pre.std)
    return PoolMember(_freeze(model, device), space, None, str(weights), None)


def _freeze(model: nn.Module, device) -> nn.Module:
    return model.to(device).eval().requires_grad_(False)


def draw_pool_member(pool: list[PoolArch], generator: torch.Generator) -> tuple[int, int]:
    """(architecture index, model index): an architecture uniformly, then one of its models uniformly."""
    arch = int(torch.randint(len(pool), (1,), generator=generator))
    model = int(torch.randint(len(pool[arch].members), (1,), generator=generator))
    return arch, model
