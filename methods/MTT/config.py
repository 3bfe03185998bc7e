"""The settings of an MTT distillation (`MttConfig`), their checks, and the rules derived from them.

Field names are MTT's flag names where it has one (`syn_steps`, `expert_epochs`, ...); `iterations` is
--Iteration. Shape-changing CLoM settings live in `clom` as for DC/DSA/DM; a pool made of the buffer's own experts
is the architecture name "experts:<model>" with `model_num` experts at `epoch` of their trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.clom import ClomOptions, check_clom_options
from methods.DC_DSA_DM.config import eval_model_pool
from networks import list_networks
from utils.augment import DSA_OPS, parse_strategy
from utils.errors import SettingError

PIX_INITS = ("noise", "real")
EXPERT_POOL_PREFIX = "experts:"  # models_pool entry naming the buffer's experts as the CLoM pool


@dataclass(frozen=True)
class MttConfig:
    dataset: str
    model: str
    ipc: int
    buffer_path: str
    method: str = "MTT"  # names the save folder and the result file, as for the other methods
    eval_mode: str = "S"
    num_exp: int = 1
    num_eval: int = 5
    eval_it: int = 100
    epoch_eval_train: int = 1000
    iterations: int = 5000
    lr_img: float = 1000.0
    lr_lr: float = 1e-05
    lr_teacher: float = 0.01  # the student's first learning rate (syn_lr), then learned
    batch_syn: int | None = None  # None: the whole synthetic set in every student step
    batch_train: int = 256
    pix_init: str = "real"
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    zca: bool = False
    syn_steps: int = 20
    expert_epochs: int = 3
    max_start_epoch: int = 25
    load_all: bool = False  # MTT: a random expert each iteration (else every expert once per pass, shuffled)
    max_files: int | None = None
    max_experts: int | None = None
    data_path: str | None = None
    save_path: str | None = None
    download: bool = True
    checkpoint_every: int = 100
    resume: bool = False
    stop_after: int | None = None
    seed: int | None = None
    clom: ClomOptions | None = None
    precision: str | None = None
    eager: bool = False

    @property
    def augmentation(self) -> str | None:
        return self.dsa_strategy if self.dsa else None

    @property
    def experts_as_pool(self) -> bool:
        return self.clom is not None and any(str(a).startswith(EXPERT_POOL_PREFIX) for a in self.clom.models_pool)


def check_config(cfg: MttConfig) -> None:
    """Every setting checked before anything is loaded or created."""
    for name in ("ipc", "num_exp", "eval_it", "epoch_eval_train", "batch_train", "checkpoint_every", "syn_steps",
                 "expert_epochs", "max_start_epoch"):
        _at_least(getattr(cfg, name), name, 1)
    for name in ("iterations", "num_eval"):
        _at_least(getattr(cfg, name), name, 0)
    for name in ("batch_syn", "max_files", "max_experts", "stop_after"):
        if getattr(cfg, name) is not None:
            _at_least(getattr(cfg, name), name, 0 if name == "stop_after" else 1)
    for name in ("lr_img", "lr_lr", "lr_teacher"):
        if not getattr(cfg, name) > 0:
            raise SettingError(name, f"must be > 0, got {getattr(cfg, name)}")
    if cfg.pix_init not in PIX_INITS:
        raise SettingError("pix_init", f"must be one of {'|'.join(PIX_INITS)}, got {cfg.pix_init!r}")
    if cfg.dsa:
        parse_strategy(cfg.dsa_strategy, tuple(DSA_OPS), "DSA")
    known = set(list_networks())
    for name in dict.fromkeys([cfg.model, *eval_model_pool(cfg.eval_mode, cfg.model)]):
        if name not in known:
            raise SettingError("model", f"{name!r} is unknown; known: {', '.join(sorted(known))}")
    if cfg.clom is not None:
        check_clom_options(cfg.clom)
        pool = list(cfg.clom.models_pool)
        if cfg.experts_as_pool and pool != [EXPERT_POOL_PREFIX + cfg.model]:
            raise SettingError("clom.models_pool", "the experts serve as the whole pool, alone")


def _at_least(value: int, name: str, low: int) -> None:
    if value < low:
        raise SettingError(name, f"must be >= {low}, got {value}")


def evaluation_iterations(cfg: MttConfig) -> set[int]:
    """MTT's: every eval_it iterations from 0; and the last, so that the saved set is one that was evaluated."""
    return set(range(0, cfg.iterations + 1, cfg.eval_it)) | {cfg.iterations}
