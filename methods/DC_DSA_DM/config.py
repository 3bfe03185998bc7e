"""The settings of a distillation run (`DistillConfig`), their checks, and the pure rules derived from
them: which networks evaluate the set, at which iterations, with which augmentation and epochs.

Settings carry their own names (`ipc`, `iterations`, `clom.distance`, ...); only flags.py knows the
command-line flags that set them.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.clom import ClomOptions, check_clom_options
from methods.DC_DSA_DM.gradient_matching import METRICS
from methods.DC_DSA_DM.synset import INITS
from networks import list_networks
from utils.augment import (
    DEFAULT_DSA_STRATEGY,
    DISTILLATION_DSA,
    Augment,
    dc_aug_strategy,
    dc_augmenter,
    dsa_augmenter,
    is_identity,
)
from utils.errors import SettingError

METHODS = ("DC", "DSA", "DM")
EVAL_EVERY = {"DC": 500, "DSA": 500, "DM": 2000}  # the paper's evaluation interval (eval modes S and SS)
EVAL_POOLS = {
    "M": ["MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18"],
    "B": ["ConvNetBN", "ConvNetASwishBN", "AlexNetBN", "VGG11BN", "ResNet18BN"],
    "W": ["ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256"],
    "D": ["ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4"],
    "A": ["ConvNetAS", "ConvNetAR", "ConvNetAL", "ConvNetASwish"],
    "P": ["ConvNetNP", "ConvNetMP", "ConvNetAP"],
    "N": ["ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN"],
}
EVAL_MODES = ("S", "SS", *EVAL_POOLS)
AUGMENTED_EVAL_EPOCHS = 1000  # the paper trains 1000 epochs whenever evaluation augments (DSA or DC)


@dataclass(frozen=True)
class DistillConfig:
    method: str  # DC | DSA | DM
    dataset: str
    model: str
    ipc: int
    eval_mode: str
    num_exp: int
    num_eval: int
    epoch_eval_train: int
    iterations: int
    lr_img: float
    lr_net: float
    batch_real: int
    batch_train: int
    init: str
    dsa_strategy: str | None
    dis_metric: str
    data_path: str | None
    save_path: str | None
    download: bool = True
    checkpoint_every: int = 100
    resume: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this iteration; resume continues
    seed: int | None = None  # None: from the clock (or the checkpoint's, when resuming)
    clom: ClomOptions | None = None
    precision: str | None = None  # fp32 | tf32 | bf16; None: the device's default (utils/runtime.py)
    eager: bool = False  # fast paths off (they give the same set up to float rounding)

    @property
    def augmentation(self) -> str | None:
        """The DSA strategy in use: DSA always augments (default strategy when none is given), DM unless
        the strategy is 'none', DC never."""
        if self.method == "DSA":
            return self.dsa_strategy or DEFAULT_DSA_STRATEGY
        if self.method == "DM" and not is_identity(self.dsa_strategy):
            return self.dsa_strategy
        return None


def check_config(cfg: DistillConfig) -> None:
    """Every setting checked before anything is loaded or created."""
    if cfg.method not in METHODS:
        raise SettingError("method", f"must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    _at_least(cfg.ipc, "ipc", 1)
    _at_least(cfg.iterations, "iterations", 0)
    for name in ("num_exp", "epoch_eval_train", "batch_real", "batch_train", "checkpoint_every"):
        _at_least(getattr(cfg, name), name, 1)
    _at_least(cfg.num_eval, "num_eval", 0)
    if cfg.stop_after is not None:
        _at_least(cfg.stop_after, "stop_after", 0)
    for name in ("lr_img", "lr_net"):
        if not getattr(cfg, name) > 0:
            raise SettingError(name, f"must be > 0, got {getattr(cfg, name)}")
    if cfg.init not in INITS:
        raise SettingError("init", f"must be one of {'|'.join(INITS)}, got {cfg.init!r}")
    if cfg.dis_metric not in METRICS:
        raise SettingError("dis_metric", f"must be one of {'|'.join(METRICS)}, got {cfg.dis_metric!r}")
    known = set(list_networks())
    for name in dict.fromkeys([cfg.model, *eval_model_pool(cfg.eval_mode, cfg.model)]):
        if name not in known:
            raise SettingError("model", f"{name!r} is unknown; known: {', '.join(sorted(known))}")
    if cfg.clom is not None:
        check_clom_options(cfg.clom)


def _at_least(value: int, name: str, low: int) -> None:
    if value < low:
        raise SettingError(name, f"must be >= {low}, got {value}")


def eval_model_pool(eval_mode: str, model: str) -> list[str]:
    """The architectures the synthetic set is evaluated on (the paper's get_eval_pool)."""
    if eval_mode == "S":  # the model without BatchNorm: a synthetic set is too small for BN statistics
        return [model[: model.index("BN")]] if "BN" in model else [model]
    if eval_mode == "SS":
        return [model]
    if eval_mode in EVAL_POOLS:
        return list(EVAL_POOLS[eval_mode])
    raise SettingError("eval_mode", f"{eval_mode!r} is unknown; choose one of {', '.join(EVAL_MODES)}")


def evaluation_iterations(cfg: DistillConfig) -> set[int]:
    """Eval modes S / SS: every 500 iterations (DM: 2000) and the last; other modes: only the last."""
    if cfg.eval_mode in ("S", "SS"):
        return set(range(0, cfg.iterations + 1, EVAL_EVERY[cfg.method])) | {cfg.iterations}
    return {cfg.iterations}


def eval_augmentation(cfg: DistillConfig, dataset: str, model_eval: str) -> tuple[Augment | None, int]:
    """(augment, epochs) for evaluation during a run, as the paper: DSA augmentation (its distillation code's,
    align_corners False) for DSA (1000 epochs) and DM (epoch_eval_train); for DC its DC augmentation, with
    1000 epochs when that is not 'none'."""
    strategy = cfg.augmentation
    if strategy is not None:
        epochs = AUGMENTED_EVAL_EPOCHS if cfg.method == "DSA" else cfg.epoch_eval_train
        return dsa_augmenter(strategy, DISTILLATION_DSA), epochs  # the paper's distillation-code DSA
    if cfg.method == "DC":
        augment = dc_augmenter(dc_aug_strategy(dataset, model_eval))
        if augment is not None:
            return augment, AUGMENTED_EVAL_EPOCHS
    return None, cfg.epoch_eval_train
