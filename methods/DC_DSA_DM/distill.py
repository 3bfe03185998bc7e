"""The distillation loop shared by DC, DSA and DM: iterations, evaluations, checkpoints, resume, saving.

One experiment = init the synthetic set, then for it = 0 .. Iteration-1 one method iteration (DC/DSA:
`gradient_matching_iteration`, DM: `distribution_matching_iteration`), evaluating the set at the
evaluation iterations (before that iteration's update; the last one is it = Iteration, after the final
update, so the saved set is exactly the one evaluated).

Reproducible and resumable: every random draw of iteration `it` of experiment `exp` comes from generators
seeded with derive_seed(seed, ..., exp, it) (the random network, the real batches, DSA, the inner-loop batch
order, and the extra loss via its `reseed`), and evaluation k uses derive_seed(seed, "evaluation", exp, it,
k). Nothing depends on RNG history, so a run continued from a checkpoint (synthetic images + optimizer
momentum + where it was) ends with the same synthetic set as an uninterrupted run.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from methods.DC_DSA_DM.distribution_matching import distribution_matching_loss
from methods.DC_DSA_DM.gradient_matching import METRICS, get_loops, gradient_matching_loss, siamese_augment
from methods.DC_DSA_DM.synset import INITS, class_major_labels, initial_images, per_class, visualization_png
from networks import has_batchnorm, list_networks
from utils.augment import dc_aug_strategy, dc_augment, dsa_augment
from utils.data import LoadedDataset, get_dataset_spec, load_dataset
from utils.distributed import DistInfo, all_reduce_sum_, barrier, broadcast_int, split_range
from utils.engine import (
    Schedule,
    TensorSource,
    build_seeded_network,
    paper_eval_schedule,
    train_and_test,
    train_models,
)
from utils.io import (
    atomic_bytes_save,
    atomic_json_save,
    atomic_torch_save,
    result_file_name,
    safe_torch_load,
    to_plain,
)
from utils.misc import (
    UserError,
    check_positive,
    make_generator,
    progress_disabled,
    resolve_seed,
    seed_everything,
    setup_logging,
)

DEFAULT_DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
EVAL_EVERY = {"DC": 500, "DSA": 500, "DM": 2000}  # the paper's evaluation interval (eval modes S and SS)
# Classes whose gradients are computed in one vmap call hold about this many real images together: the
# batched call's memory grows with it (~4.5 MB per 3x32x32 image for ConvNet), the result does not change.
MATCH_CHUNK_REAL_IMAGES = 2560
BN_BATCH_PER_CLASS = 16  # real images per class that set a BatchNorm network's running statistics
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
# Settings that do not change the synthetic set: a run may be resumed with other values of these.
OPERATIONAL_SETTINGS = ("data_path", "save_path", "download", "checkpoint_every", "resume", "stop_after",
                        "seed")

ExtraLoss = Callable[[Tensor, Tensor], Tensor]  # (image_syn, label_syn) -> scalar added to the method's loss


class NonFiniteLossError(UserError):
    """The distillation loss became nan/inf; the last good synthetic set is in the checkpoint."""


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class ClomOptions:
    distance: str
    alphas: list[float] | None
    models_pool: list[str] | None
    model_num: int
    epoch: int
    source_dataset: str
    batch_size: int
    feature: str
    cache_gb: float
    weights: list[str] = field(default_factory=list)


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
    stop_after: int | None = None  # stop (with a checkpoint) after this iteration; --resume continues
    seed: int | None = None  # None: from the clock (or the checkpoint's, when resuming)
    clom: ClomOptions | None = None

    @classmethod
    def from_flags(cls, flags: Mapping) -> DistillConfig:
        """From the paper's flag names (a script's parsed arguments as a dict)."""
        clom = None
        if flags["CLoM"]:
            clom = ClomOptions(
                distance=flags["CLoM_distance"], alphas=flags["alphas"], models_pool=flags["models_pool"],
                model_num=flags["model_num"], epoch=flags["epoch"],
                source_dataset=flags["source_dataset"] or flags["dataset"],
                batch_size=flags["CLoM_batch_size"], feature=flags["CLoM_feature"],
                cache_gb=flags["CLoM_cache_gb"], weights=list(flags["CLoM_weights"] or []))
        return cls(
            method=str(flags["method"]).upper(), dataset=flags["dataset"], model=flags["model"],
            ipc=flags["ipc"], eval_mode=str(flags["eval_mode"]).upper(), num_exp=flags["num_exp"],
            num_eval=flags["num_eval"], epoch_eval_train=flags["epoch_eval_train"],
            iterations=flags["Iteration"], lr_img=flags["lr_img"], lr_net=flags["lr_net"],
            batch_real=flags["batch_real"], batch_train=flags["batch_train"], init=flags["init"],
            dsa_strategy=flags["dsa_strategy"], dis_metric=flags["dis_metric"], data_path=flags["data_path"],
            save_path=flags["save_path"], download=not flags["no_download"],
            checkpoint_every=flags["checkpoint_every"], resume=flags["resume"],
            stop_after=flags["stop_after"], seed=flags["random_seed"], clom=clom)

    @property
    def augmentation(self) -> str | None:
        """The DSA strategy in use: DSA always augments (default strategy when none is given), DM unless
        the strategy is 'none', DC never."""
        if self.method == "DSA":
            return self.dsa_strategy or DEFAULT_DSA_STRATEGY
        if self.method == "DM" and self.dsa_strategy not in (None, "", "none", "None"):
            return self.dsa_strategy
        return None


def check_config(cfg: DistillConfig) -> None:
    if cfg.method not in EVAL_EVERY:
        raise UserError(f"unknown method {cfg.method!r}; choose DC or DSA (main.py) or DM (main_DM.py)")
    check_positive(cfg.ipc, "--ipc")
    check_positive(cfg.iterations, "--Iteration", allow_zero=True)
    for value, name in ((cfg.num_exp, "--num_exp"), (cfg.epoch_eval_train, "--epoch_eval_train"),
                        (cfg.batch_real, "--batch_real"), (cfg.batch_train, "--batch_train"),
                        (cfg.checkpoint_every, "--checkpoint_every")):
        check_positive(value, name)
    check_positive(cfg.num_eval, "--num_eval", allow_zero=True)
    if cfg.stop_after is not None:
        check_positive(cfg.stop_after, "--stop_after", allow_zero=True)
    if not (cfg.lr_img > 0 and cfg.lr_net > 0):
        raise UserError(f"--lr_img and --lr_net must be > 0, got {cfg.lr_img} and {cfg.lr_net}")
    if cfg.init not in INITS:
        raise UserError(f"--init must be one of {'|'.join(INITS)}, got {cfg.init!r}")
    if cfg.dis_metric not in METRICS:
        raise UserError(f"--dis_metric must be one of {'|'.join(METRICS)}, got {cfg.dis_metric!r}")
    if cfg.clom is not None and not cfg.clom.models_pool:
        raise UserError("--CLoM needs --models_pool (architectures of the pre-trained pool) and --alphas")
    known = set(list_networks())
    for name in dict.fromkeys([cfg.model, *eval_model_pool(cfg.eval_mode, cfg.model)]):
        if name not in known:
            raise UserError(f"unknown network {name!r}; known: {', '.join(sorted(known))}")


def eval_model_pool(eval_mode: str, model: str) -> list[str]:
    """The architectures the synthetic set is evaluated on (the paper's get_eval_pool)."""
    if eval_mode == "S":  # the model without BatchNorm: a synthetic set is too small for BN statistics
        return [model[: model.index("BN")]] if "BN" in model else [model]
    if eval_mode == "SS":
        return [model]
    if eval_mode in EVAL_POOLS:
        return list(EVAL_POOLS[eval_mode])
    raise UserError(f"unknown --eval_mode {eval_mode!r}; choose one of {', '.join(EVAL_MODES)}")


def evaluation_iterations(cfg: DistillConfig) -> set[int]:
    """Eval modes S / SS: every 500 iterations (DM: 2000) and the last; other modes: only the last."""
    if cfg.eval_mode in ("S", "SS"):
        return set(range(0, cfg.iterations + 1, EVAL_EVERY[cfg.method])) | {cfg.iterations}
    return {cfg.iterations}


def save_folder(cfg: DistillConfig, dataset: str) -> Path:
    """(--save_path or condensed/<dataset>/<method>/IPC<ipc>/) + the paper code's CLoM sub-folders, or
    original_method/ (the paper code appends these to a given --save_path too)."""
    folder = Path(cfg.save_path) if cfg.save_path else Path("condensed") / dataset / cfg.method / f"IPC{cfg.ipc}"
    clom = cfg.clom
    if clom is None:
        return folder / "original_method"
    source = get_dataset_spec(clom.source_dataset).name
    return (folder / "CLoM" / f"{clom.distance}_distance" / f"{source}->{dataset}"
            / f"MP{clom.models_pool}_Nm[{clom.model_num}]_Epoch[{clom.epoch}]"
            / f"alphas{clom.models_pool}->{clom.alphas}")


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed that depends only on (seed, *parts): independent streams per use, no RNG history."""
    digest = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# ------------------------------------------------------------------------------------------------ files
@dataclass(frozen=True)
class RunFiles:
    """The files of one run, all named after the paper's result file res_<method>_<dataset>_<model>_<ipc>ipc."""

    folder: Path
    method: str
    dataset: str
    model: str
    ipc: int

    @property
    def stem(self) -> str:
        return f"{self.method}_{self.dataset}_{self.model}_{self.ipc}ipc"

    @property
    def result(self) -> Path:
        return self.folder / result_file_name(self.method, self.dataset, self.model, self.ipc)

    @property
    def checkpoint(self) -> Path:
        return self.folder / f"checkpoint_{self.stem}.pt"

    @property
    def log(self) -> Path:
        return self.folder / f"log_{self.stem}.txt"

    @property
    def args(self) -> Path:
        return self.folder / f"args_{self.stem}.json"

    def png(self, exp: int, it: int) -> Path:
        return self.folder / f"vis_{self.stem}_exp{exp}_iter{it}.png"


@dataclass
class Progress:
    """Where a run is: what a checkpoint holds (besides the settings)."""

    exp: int = 0
    next_iteration: int = 0
    images: Tensor | None = None  # the synthetic set of experiment `exp` (None: not started yet)
    optimizer_state: dict | None = None
    accs_all_exps: dict[str, list[float]] = field(default_factory=dict)
    data: list[list[Tensor]] = field(default_factory=list)  # [[images, labels], ...] of finished experiments


@dataclass
class Run:
    """Everything an iteration or an evaluation needs, resolved once."""

    cfg: DistillConfig
    data: LoadedDataset
    device: torch.device
    seed: int
    files: RunFiles
    eval_models: list[str]
    flags: dict
    dist: DistInfo
    logger: logging.Logger
    extra: ExtraLoss | None = None

    @property
    def my_classes(self) -> slice:
        """The classes whose matching loss this rank computes (all of them in one process)."""
        mine = split_range(self.data.spec.num_classes, self.dist)
        return slice(mine[0], mine[-1] + 1) if mine else slice(0, 0)

    def save_checkpoint(self, progress: Progress) -> None:
        """Atomically: a crash while writing leaves the previous checkpoint intact."""
        if self.dist.is_main:
            payload = {"exp": progress.exp, "next_iteration": progress.next_iteration,
                       "images": None if progress.images is None else progress.images.cpu(),
                       "optimizer_state": progress.optimizer_state,
                       "accs_all_exps": to_plain(progress.accs_all_exps), "data": progress.data,
                       "config": to_plain(asdict(self.cfg)), "seed": self.seed, "args": self.flags}
            atomic_torch_save(payload, self.files.checkpoint, overwrite=True)

    def save_result(self, progress: Progress) -> None:
        if self.dist.is_main:
            payload = {"data": progress.data, "accs_all_exps": to_plain(progress.accs_all_exps),
                       "normalized": True, "args": self.flags, "seed": self.seed}
            atomic_torch_save(payload, self.files.result, overwrite=True)


def _comparable(config: Mapping) -> dict:
    """The settings that shape the synthetic set (the CLoM feature cache size only changes the speed)."""
    kept = {key: value for key, value in config.items() if key not in OPERATIONAL_SETTINGS}
    if kept.get("clom"):
        kept["clom"] = {key: value for key, value in kept["clom"].items() if key != "cache_gb"}
    return kept


def start_or_resume(cfg: DistillConfig, files: RunFiles) -> tuple[Progress, int] | None:
    """(progress, seed) to continue from: a new run, or the checkpoint's with --resume. None: the run is
    already complete. Refuses to touch another run's results."""
    if files.checkpoint.exists():
        if not cfg.resume:
            raise UserError(f"{files.folder} holds an unfinished run ({files.checkpoint.name}): pass "
                            f"--resume to continue it, or another --save_path")
        saved = safe_torch_load(files.checkpoint, "checkpoint")
        differ = sorted(key for key, value in _comparable(saved["config"]).items()
                        if _comparable(to_plain(asdict(cfg))).get(key) != value)
        if differ:
            raise UserError(f"cannot resume {files.checkpoint}: it was made with other settings "
                            f"({', '.join(differ)}); pass the same flags, or another --save_path")
        if cfg.seed is not None and cfg.seed != saved["seed"]:
            raise UserError(f"cannot resume {files.checkpoint}: it was made with --random_seed "
                            f"{saved['seed']}")
        progress = Progress(saved["exp"], saved["next_iteration"], saved["images"], saved["optimizer_state"],
                            saved["accs_all_exps"], saved["data"])
        return progress, int(saved["seed"])
    if files.result.exists():
        if not cfg.resume:
            raise UserError(f"{files.result} already exists: pass --resume (to finish or keep it) or another "
                            f"--save_path")
        done = len(safe_torch_load(files.result, "result file").get("data", []))
        if done >= cfg.num_exp:
            return None
        raise UserError(f"{files.result} holds {done} of {cfg.num_exp} experiments and there is no "
                        f"checkpoint to continue from; pick another --save_path")
    return Progress(), resolve_seed(cfg.seed)


# ------------------------------------------------------------------------------------------------ the run
def run(cfg: DistillConfig, device: torch.device, flags: dict, dist: DistInfo | None = None) -> Path | None:
    """Distill `cfg.num_exp` synthetic sets; returns the result file (None when stopped by --stop_after)."""
    dist = dist or DistInfo()
    check_config(cfg)
    logger = setup_logging(None, quiet=not dist.is_main)
    spec = get_dataset_spec(cfg.dataset)
    files = RunFiles(save_folder(cfg, spec.name), cfg.method, spec.name, cfg.model, cfg.ipc)
    started = start_or_resume(cfg, files)
    if started is None:
        logger.info("%s is complete (%d experiments); nothing to resume", files.result, cfg.num_exp)
        return files.result
    progress, seed = started
    seed = broadcast_int(dist, seed)  # under torchrun every rank takes rank 0's (clock) seed
    seed_everything(seed)
    if device.type == "cuda":  # every step repeats the same shapes: let cuDNN pick its fastest kernels once
        torch.backends.cudnn.benchmark = True
    data = load_dataset(spec.name, cfg.data_path, device, normalize=True, download=cfg.download)

    logger = setup_logging(files.log if dist.is_main else None, quiet=not dist.is_main)
    run = Run(cfg, data, device, seed, files, eval_model_pool(cfg.eval_mode, cfg.model), flags, dist, logger)
    if dist.is_main:
        atomic_json_save(to_plain({"args": flags, "seed": seed}), files.args, overwrite=True)
    where = f"experiment {progress.exp}, iteration {progress.next_iteration}"
    resuming = progress.exp > 0 or progress.next_iteration > 0
    logger.info("%s %s on %s, ipc %d | seed %d | device %s | save folder %s", f"resuming at {where}:"
                if resuming else "starting", cfg.method, spec.name, cfg.ipc, seed, device, files.folder)
    logger.info("settings: %s", flags)
    logger.info("real images per class: %s | evaluation models: %s | DSA: %s",
                data.train.class_counts().tolist(), run.eval_models, cfg.augmentation)
    run.extra = build_extra_loss(cfg, data, device, seed)
    if run.extra is not None and hasattr(run.extra, "describe"):
        logger.info("CLoM: %s", run.extra.describe())

    for name in run.eval_models:
        progress.accs_all_exps.setdefault(name, [])
    while progress.exp < cfg.num_exp:
        if not distill_experiment(run, progress):
            logger.info("stopped after iteration %d (--stop_after); continue with --resume", cfg.stop_after)
            return None
        run.save_result(progress)  # the experiments finished so far, as the paper code writes them
        if progress.exp < cfg.num_exp:
            run.save_checkpoint(progress)
    if dist.is_main:
        files.checkpoint.unlink(missing_ok=True)
    for name, accs in progress.accs_all_exps.items():
        if accs:
            logger.info("%d experiment(s), trained on %s, evaluated %d random %s: mean %.2f%% std %.2f%%",
                        cfg.num_exp, cfg.model, len(accs), name, 100 * np.mean(accs), 100 * np.std(accs))
    logger.info("saved %s", files.result)
    barrier(dist)
    return files.result


def distill_experiment(run: Run, progress: Progress) -> bool:
    """Run experiment `progress.exp` from `progress.next_iteration` to its end; False when stopped early."""
    cfg, exp, train = run.cfg, progress.exp, run.data.train
    labels = class_major_labels(train.num_classes, cfg.ipc, run.device)
    if progress.images is None:
        generator = make_generator(derive_seed(run.seed, "init", exp), run.device)
        progress.images = initial_images(train, cfg.ipc, cfg.init, generator)
    image_syn = progress.images.to(run.device).detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([image_syn], lr=cfg.lr_img, momentum=0.5)
    if progress.optimizer_state is not None:
        optimizer.load_state_dict(progress.optimizer_state)
    iteration = distribution_matching_iteration if cfg.method == "DM" else gradient_matching_iteration
    evaluate_at = evaluation_iterations(cfg)
    final_accs: dict[str, list[float]] = {}

    bar = tqdm(total=cfg.iterations, initial=progress.next_iteration, desc=f"exp {exp}",
               disable=progress_disabled())
    for it in range(progress.next_iteration, cfg.iterations + 1):
        # The state before iteration `it`: what a checkpoint written during this iteration must hold.
        progress.next_iteration, progress.images = it, image_syn.detach().clone()
        progress.optimizer_state = copy.deepcopy(optimizer.state_dict())
        try:
            if it in evaluate_at:
                accs = evaluate_and_show(run, image_syn, labels, exp, it)
                if it == cfg.iterations:
                    final_accs = accs
            if it == cfg.iterations:
                break
            loss = iteration(run, image_syn, labels, optimizer, exp, it)
        except (NonFiniteLossError, KeyboardInterrupt):
            run.save_checkpoint(progress)  # the last good synthetic set
            raise
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if it % 10 == 0:
            run.logger.info("exp %d iter %05d loss %.4f", exp, it, loss)
        if (it + 1) % cfg.checkpoint_every == 0 or it == cfg.stop_after:
            progress.next_iteration, progress.images = it + 1, image_syn.detach()
            progress.optimizer_state = optimizer.state_dict()
            run.save_checkpoint(progress)
            if it == cfg.stop_after:
                bar.close()
                return False
    bar.close()
    for name, accs in final_accs.items():
        progress.accs_all_exps.setdefault(name, []).extend(accs)
    progress.data.append([image_syn.detach().cpu().clone(), labels.cpu()])
    progress.exp, progress.next_iteration, progress.images, progress.optimizer_state = exp + 1, 0, None, None
    return True


def evaluate_and_show(run: Run, image_syn: Tensor, labels: Tensor, exp: int, it: int) -> dict[str, list]:
    """Train num_eval fresh networks of every evaluation model on the set, test them; write the PNG grid."""
    cfg, spec = run.cfg, run.data.spec
    images = image_syn.detach().clone()
    results = {}
    for model_eval in run.eval_models:
        augment, epochs = eval_augmentation(cfg, spec.name, model_eval)
        seeds = [derive_seed(run.seed, "evaluation", exp, it, k) for k in range(cfg.num_eval)]
        accs = []
        if seeds:
            accs = train_and_test(model_eval, TensorSource(images, labels), run.data.test,
                                  paper_eval_schedule(epochs, cfg.lr_net, cfg.batch_train), seeds,
                                  channel=spec.channel, num_classes=spec.num_classes, im_size=spec.im_size,
                                  device=run.device, augment=augment, desc=f"evaluate {model_eval}",
                                  dist=run.dist).final
            run.logger.info("exp %d iter %d: %d random %s (%d epochs): test acc mean %.4f std %.4f", exp, it,
                            len(accs), model_eval, epochs, np.mean(accs), np.std(accs))
        results[model_eval] = [float(a) for a in accs]
    if run.dist.is_main:
        png = visualization_png(images, run.data.train, cfg.ipc)
        atomic_bytes_save(png, run.files.png(exp, it), overwrite=True)
    return results


def eval_augmentation(cfg: DistillConfig, dataset: str, model_eval: str):
    """(augment, epochs) for evaluation, as the paper: DSA augmentation for DSA (1000 epochs) and DM
    (--epoch_eval_train); for DC its DC augmentation, with 1000 epochs when that is not 'none'."""
    strategy = cfg.augmentation
    if strategy is not None:
        epochs = 1000 if cfg.method == "DSA" else cfg.epoch_eval_train
        return (lambda x, generator: dsa_augment(x, strategy, generator)), epochs
    if cfg.method == "DC":
        dc_strategy = dc_aug_strategy(dataset, model_eval)
        if dc_strategy != "none":
            return (lambda x, generator: dc_augment(x, dc_strategy, generator)), 1000
    return None, cfg.epoch_eval_train


# ------------------------------------------------------------------------------------------------ iterations
def gradient_matching_iteration(run: Run, image_syn: Tensor, labels: Tensor, optimizer, exp: int,
                                it: int) -> float:
    """DC / DSA: a fresh random network; outer_loop times: match the per-class gradients of real and
    synthetic images (+ extra loss), step the images, then train the network inner_loop epochs on them."""
    cfg, train = run.cfg, run.data.train
    outer_loop, inner_loop = get_loops(cfg.ipc)
    net, generator = seeded_randomness(run, exp, it)
    net.train()
    inner_schedule = Schedule(epochs=inner_loop, batch_size=cfg.batch_train, lr=cfg.lr_net, momentum=0.0,
                              weight_decay=0.0)
    strategy = cfg.augmentation
    inner_augment = None if strategy is None else (lambda x, g: dsa_augment(x, strategy, g))
    total = 0.0
    for step in range(outer_loop):
        if has_batchnorm(net):
            bn_batch = train.sample_per_class(BN_BATCH_PER_CLASS, generator).flatten(0, 1)
            freeze_batchnorm_statistics(net, bn_batch)
        real = train.sample_per_class(cfg.batch_real, generator)
        syn = per_class(image_syn, train.num_classes)
        if strategy is not None:
            real, syn = siamese_augment(real, syn, strategy, generator)
        # Every rank draws the same batches; each matches only its own classes (BN layers are frozen, so
        # the classes are independent) and image_step sums the gradients.
        loss = image_syn.new_zeros(())
        mine = run.my_classes
        if mine.stop > mine.start:
            classes = torch.arange(mine.start, mine.stop, device=run.device)[:, None]
            loss = gradient_matching_loss(net, real[mine], syn[mine], classes.expand(-1, real.shape[1]),
                                          classes.expand(-1, syn.shape[1]), metric=cfg.dis_metric,
                                          chunk_size=max(1, MATCH_CHUNK_REAL_IMAGES // real.shape[1]))
        total += image_step(run, optimizer, loss, image_syn, labels, exp, it)
        if step == outer_loop - 1:
            break
        train_models([net], TensorSource(image_syn.detach(), labels), inner_schedule, [generator],
                     augment=inner_augment)
    return total / (train.num_classes * outer_loop)


def distribution_matching_iteration(run: Run, image_syn: Tensor, labels: Tensor, optimizer, exp: int,
                                    it: int) -> float:
    """DM: a fresh random, frozen network (train mode); match every class's mean embedding (+ extra loss)."""
    cfg, train = run.cfg, run.data.train
    net, generator = seeded_randomness(run, exp, it)
    net.train().requires_grad_(False)
    real = train.sample_per_class(cfg.batch_real, generator)
    syn = per_class(image_syn, train.num_classes)
    if cfg.augmentation is not None:
        real, syn = siamese_augment(real, syn, cfg.augmentation, generator)
    if has_batchnorm(net):  # BN statistics mix the classes: every rank computes the whole loss, scaled
        loss = distribution_matching_loss(net, real, syn) / run.dist.world
    else:
        mine = run.my_classes
        loss = distribution_matching_loss(net, real[mine], syn[mine]) if mine.stop > mine.start else \
            image_syn.new_zeros(())
    return image_step(run, optimizer, loss, image_syn, labels, exp, it) / train.num_classes


def seeded_randomness(run: Run, exp: int, it: int) -> tuple[nn.Module, torch.Generator]:
    """Iteration `it`'s random network and generator (real batches, DSA, batch order), and a reseeded extra
    loss: all from (seed, exp, it) alone, so a resumed run takes exactly the same steps."""
    spec = run.data.spec
    net = build_seeded_network(run.cfg.model, spec.channel, spec.num_classes, spec.im_size,
                               derive_seed(run.seed, "network", exp, it), run.device)
    generator = make_generator(derive_seed(run.seed, "iteration", exp, it), run.device)
    if run.extra is not None and hasattr(run.extra, "reseed"):
        run.extra.reseed(derive_seed(run.seed, "extra loss", exp, it))
    return net, generator


def image_step(run: Run, optimizer, loss: Tensor, image_syn: Tensor, labels: Tensor, exp: int,
               it: int) -> float:
    """Add the extra loss term (CLoM), refuse a non-finite loss, take one SGD step on the synthetic images.
    Under torchrun `loss` is this rank's share: the images' gradients (and the loss) are summed over ranks."""
    if run.extra is not None:
        loss = loss + run.extra(image_syn, labels) / run.dist.world
    value = float(all_reduce_sum_(run.dist, loss.detach().clone()).item())
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the loss became {value} at iteration {it} of experiment {exp}; the last "
                                 f"good synthetic set is saved in {run.files.checkpoint} (try a smaller "
                                 f"--lr_img)")
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:  # a rank with no classes (more ranks than classes) contributes nothing
        loss.backward()
    if image_syn.grad is None:
        image_syn.grad = torch.zeros_like(image_syn)
    all_reduce_sum_(run.dist, image_syn.grad)
    optimizer.step()
    return value


def freeze_batchnorm_statistics(net: nn.Module, real_images: Tensor) -> None:
    """The paper's trick: a synthetic batch is too small for BatchNorm statistics, so set the running
    statistics from a real batch (train-mode forward) and then fix them (BN layers in eval mode)."""
    net.train()
    with torch.no_grad():
        net(real_images)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


# ------------------------------------------------------------------------------------------------ CLoM
def build_extra_loss(cfg: DistillConfig, data: LoadedDataset, device: torch.device,
                     seed: int) -> ExtraLoss | None:
    """The CLoM term (methods/clom.py) when --CLoM is given, else None."""
    if cfg.clom is None:
        return None
    try:
        from methods.clom import build_clom_loss, parse_weight_map
    except ImportError as err:
        raise UserError(f"--CLoM is not available: methods/clom.py cannot be used ({err})") from None
    clom = cfg.clom
    return build_clom_loss(
        distance=clom.distance, alphas=clom.alphas, models_pool=clom.models_pool, model_num=clom.model_num,
        epoch=clom.epoch, source_dataset=clom.source_dataset, batch_size=clom.batch_size,
        feature=clom.feature, real_images=data.train, real_labels=None, target_mean=data.train.mean,
        target_std=data.train.std, target_normalized=data.normalized,
        target_num_classes=data.spec.num_classes, device=device, seed=derive_seed(seed, "extra loss"),
        cache_budget_bytes=int(clom.cache_gb * (1 << 30)),
        weights=parse_weight_map(clom.weights) if clom.weights else None)
