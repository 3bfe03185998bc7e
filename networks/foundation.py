"""Foundation models (timm, open_clip, torchvision) as frozen feature extractors for CLoM's `cos` distance.

A pool name `timm:<model>`, `open_clip:<model>` or `torchvision:<model>` is built with random weights
(timm/open_clip with pretrained=False, torchvision with weights=None), then loaded from a local file or
folder. Nothing is downloaded unless the weight path is the word `download` (open_clip: `download` takes the
first published tag, `download:<tag>` a named one).

Every model carries the preprocessing it was trained with (input size, mean, std: timm's pretrained_cfg,
open_clip's preprocess config, torchvision's weight transforms, else ImageNet defaults) and gives embeddings:
timm with num_classes=0 (forward_features + its pooling), open_clip's encode_image, torchvision with its
final Linear classifier replaced by Identity.

This module imports only torch (+ the optional libraries, lazily); its errors are FoundationModelError,
raised `from` the library's own error, which utils/pools.py turns into the suite's one-line UserError.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

LIBRARIES = ("timm", "open_clip", "torchvision")
DOWNLOAD = "download"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
# Names a library's own export uses inside a weights folder, best first.
_KNOWN_WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
)


class FoundationModelError(RuntimeError):
    """A foundation pool member cannot be built (bad name, weights, or a missing optional package)."""


class MissingExtrasError(FoundationModelError, ImportError):
    def __init__(self, package: str):
        super().__init__(
            f"pool models '{package}:<name>' need the optional package {package}: "
            "pip install -r requirements-extras.txt"
        )


@dataclass(frozen=True)
class Preprocessing:
    """The input a model expects: 3-channel images of `im_size`, normalized with mean/std."""

    im_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel: int = 3


class FoundationModel(nn.Module):
    """A frozen backbone whose `embed(x)` (and forward) maps preprocessed images to (N, d) embeddings."""

    def __init__(self, name: str, backbone: nn.Module, embed_fn: Callable, preprocessing: Preprocessing):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self._embed_fn = embed_fn
        self.preprocessing = preprocessing

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed_fn(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def is_foundation_name(name: str) -> bool:
    return ":" in name


def split_foundation_name(name: str) -> tuple[str, str]:
    """'timm:resnet18' -> ('timm', 'resnet18'), with a clear error for anything else."""
    library, _, model = name.partition(":")
    if library not in LIBRARIES or not model:
        raise FoundationModelError(
            f"pool model {name!r}: expected <library>:<model> with library one of "
            f"{', '.join(LIBRARIES)} (e.g. timm:resnet18)"
        )
    return library, model


def build_foundation_model(name: str, weights: str | None) -> FoundationModel:
    """Build `name` and load its weights from `weights` (a file, a folder, or 'download'). Eval mode."""
    library, model_name = split_foundation_name(name)
    if not weights:
        raise FoundationModelError(
            f"pool model {name!r} needs weights: pass --CLoM_weights "
            f"{name}=/path/to/weights (a file or folder), or ={DOWNLOAD} to fetch them"
        )
    if model_name.startswith("hf-hub:") and weights != DOWNLOAD:
        raise FoundationModelError(
            f"pool model {name!r} reads its config from the Hugging Face Hub; use a "
            f"built-in model name, or pass ={DOWNLOAD} to allow network access"
        )
    builder = {"timm": _build_timm, "open_clip": _build_open_clip, "torchvision": _build_torchvision}[library]
    model = builder(name, model_name, weights)
    return model.eval()


# ---------------------------------------------------------------- weights on disk
def resolve_weight_file(name: str, weights: str) -> Path:
    """A file as given, or the one weights file inside a folder."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FoundationModelError(f"weights for {name!r}: {path} not found")
    for known in _KNOWN_WEIGHT_FILES:
        if (path / known).is_file():
            return path / known
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise FoundationModelError(
            f"weights for {name!r}: expected one weights file ({', '.join(_WEIGHT_SUFFIXES)})"
            f" in {path}, found {found}; pass the file itself"
        )
    return candidates[0]


def unwrap_state_dict(state):
    """The state_dict inside a loaded checkpoint: training scripts' {'state_dict': ...} / {'model': ...}
    wrappers removed and DataParallel's 'module.' key prefix stripped. Anything else is returned as is."""
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_state_dict(name: str, path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign files fail in many ways
        raise FoundationModelError(f"weights for {name!r}: cannot read {path}") from err
    state = unwrap_state_dict(state)
    if not isinstance(state, dict):
        raise FoundationModelError(f"weights for {name!r}: {path} does not hold a state_dict")
    return state


def _load_into(name: str, model: nn.Module, state: dict, path: Path, droppable: tuple[str, ...] = ()) -> None:
    """Strict load, except keys under `droppable` prefixes (a classifier head the embedding model lacks)."""
    expected = set(model.state_dict())
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(droppable)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise FoundationModelError(f"weights {path} do not fit {name!r}") from err


def _import(package: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtrasError(package) from None


def _as_size(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    return size[-2:] if len(size) >= 2 else (size[0], size[0])


# ---------------------------------------------------------------- timm
def _build_timm(name: str, model_name: str, weights: str) -> FoundationModel:
    timm = _import("timm")
    download = weights == DOWNLOAD
    try:
        model = timm.create_model(
            model_name, pretrained=download, num_classes=0
        )  # num_classes=0: pooled features
    except Exception as err:  # unknown names raise RuntimeError, download failures anything
        raise FoundationModelError(f"timm cannot build {model_name!r}") from err
    if not download:
        path = resolve_weight_file(name, weights)
        try:
            state = timm.models.load_state_dict(str(path))
        except Exception as err:
            raise FoundationModelError(f"weights for {name!r}: cannot read {path}") from err
        head = model.pretrained_cfg.get("classifier") or "head"
        _load_into(
            name, model, state, path, droppable=tuple(head) if isinstance(head, (list, tuple)) else (head,)
        )
    config = timm.data.resolve_model_data_config(model)
    preprocessing = Preprocessing(_as_size(config["input_size"]), tuple(config["mean"]), tuple(config["std"]))
    return FoundationModel(name, model, model.forward, preprocessing)


# ---------------------------------------------------------------- open_clip
@contextlib.contextmanager
def _quiet_logging():
    """open_clip logs 'initialized randomly' when built without a tag; the weights come right after."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _build_open_clip(name: str, model_name: str, weights: str) -> FoundationModel:
    open_clip = _import("open_clip")
    tag = None
    if weights == DOWNLOAD or weights.startswith(DOWNLOAD + ":"):
        tag = weights.partition(":")[2] or next(
            iter(open_clip.list_pretrained_tags_by_model(model_name)), None
        )
        if tag is None:
            raise FoundationModelError(f"open_clip publishes no weights for {model_name!r}")
    try:
        with _quiet_logging():
            model = open_clip.create_model(model_name, pretrained=tag)
    except Exception as err:
        raise FoundationModelError(f"open_clip cannot build {model_name!r}") from err
    if tag is None:
        path = resolve_weight_file(name, weights)
        try:
            open_clip.load_checkpoint(model, str(path))  # converts open_clip's older / third-party formats
        except Exception as err:
            raise FoundationModelError(f"weights {path} do not fit {name!r}") from err
    config = getattr(model.visual, "preprocess_cfg", {})
    size = config.get("size", getattr(model.visual, "image_size", 224))
    mean = config.get("mean") or open_clip.OPENAI_DATASET_MEAN
    std = config.get("std") or open_clip.OPENAI_DATASET_STD
    preprocessing = Preprocessing(_as_size(size), tuple(mean), tuple(std))
    return FoundationModel(name, model, model.encode_image, preprocessing)


# ---------------------------------------------------------------- torchvision
def _build_torchvision(name: str, model_name: str, weights: str) -> FoundationModel:
    models = _import("torchvision.models")
    download = weights == DOWNLOAD
    try:
        model = models.get_model(model_name, weights="DEFAULT" if download else None)
    except Exception as err:
        raise FoundationModelError(f"torchvision cannot build {model_name!r}") from err
    if not download:
        path = resolve_weight_file(name, weights)
        _load_into(name, model, _read_state_dict(name, path), path)
    _drop_final_linear(name, model)
    return FoundationModel(name, model, model.forward, _torchvision_preprocessing(models, model_name, model))


def _drop_final_linear(name: str, model: nn.Module) -> None:
    """Replace the last nn.Linear; torchvision defines the classifier last (fc, classifier[-1], heads)."""
    linears = [path for path, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise FoundationModelError(
            f"{name!r} has no Linear classifier to remove; pick another torchvision model"
        )
    parent, _, child = linears[-1].rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())


def _torchvision_preprocessing(models, model_name: str, model: nn.Module) -> Preprocessing:
    size, mean, std = 224, IMAGENET_MEAN, IMAGENET_STD
    try:
        transform = models.get_model_weights(model_name).DEFAULT.transforms()
        size, mean, std = transform.crop_size, transform.mean, transform.std
    except Exception:  # a model without published weights (or a non-image preset): ImageNet defaults
        pass
    size = getattr(model, "image_size", size)  # ViTs are built for one exact size
    return Preprocessing(_as_size(size), tuple(mean), tuple(std))
