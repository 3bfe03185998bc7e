"""The command line of main.py (DC, DSA) and main_DM.py (DM): the paper's flags, mapped to a DistillConfig.

This module alone knows flag names. It also does what a script does once per process before distilling:
pick the device, start or resume the run (its seed), seed everything, set up logging, load the data set and
build CLoM's loss.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from methods.clom import DISTANCES, FEATURES, ClomOptions, build_clom_loss
from methods.DC_DSA_DM import distill
from methods.DC_DSA_DM.config import (
    EVAL_EVERY,
    EVAL_MODES,
    EVAL_POOLS,
    DistillConfig,
    check_config,
    eval_model_pool,
)
from methods.DC_DSA_DM.gradient_matching import METRICS
from methods.DC_DSA_DM.run_state import (
    Execution,
    RunClaim,
    RunFiles,
    RunStore,
    SettingsDiffer,
    start_or_resume,
)
from methods.DC_DSA_DM.synset import INITS
from networks import list_networks
from networks.foundation import is_foundation_name
from utils.augment import DSA_OPS
from utils.cli import (
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    HelpFormatter,
    add_data_flags,
    add_runtime_flags,
    check_output_path,
    device_name,
    fix_seed,
    parse_flags,
    seed_int,
    start_process,
)
from utils.data import load_dataset
from utils.errors import SettingError, UserError
from utils.log import setup_logging
from utils.pools import InputSpace, check_pool
from utils.runtime import fast_paths_note
from utils.seeding import derive_seed

# Setting (DistillConfig / ClomOptions field) -> the flag that sets it, for error messages.
FLAG_OF = {"iterations": "--Iteration", "seed": "--random_seed", "download": "--no_download", "device": "--gpu",
           "clom.distance": "--CLoM_distance", "clom.alphas": "--alphas", "clom.models_pool": "--models_pool",
           "clom.model_num": "--model_num", "clom.epoch": "--epoch", "clom.source_dataset": "--source_dataset",
           "clom.batch_size": "--CLoM_batch_size", "clom.feature": "--CLoM_feature",
           "clom.cache_gb": "--CLoM_cache_gb", "clom.weights": "--CLoM_weights"}


def flag_of(setting: str) -> str:
    return FLAG_OF.get(setting, f"--{setting}")


def _eval_mode_help() -> str:
    pools = "; ".join(f"{mode}: {' '.join(models)}" for mode, models in EVAL_POOLS.items())
    return (f"which networks evaluate the set: S: the --model (BatchNorm replaced by instance norm), SS: the "
            f"--model as is (both at iteration 0, every {EVAL_EVERY['DC']} (DM: {EVAL_EVERY['DM']}) and the last); "
            f"architecture pools, evaluated after the last iteration only: {pools}")


def get_args_parser(description: str, defaults: dict) -> argparse.ArgumentParser:
    """The paper's flags; `defaults` holds what differs between main.py (DC/DSA) and main_DM.py (DM)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument("--method", default=defaults["method"], help=defaults["method_help"])
    add_data_flags(parser)
    parser.add_argument("--model", default="ConvNet", metavar="NAME",
                        help=f"network the set is distilled with: {', '.join(list_networks())}")
    parser.add_argument("--ipc", type=int, default=defaults["ipc"], help="synthetic images per class")
    parser.add_argument("--eval_mode", default=defaults["eval_mode"], metavar="|".join(EVAL_MODES),
                        help=_eval_mode_help())
    parser.add_argument("--num_exp", type=int, default=1, help="experiments (synthetic sets) to distill")
    parser.add_argument("--num_eval", type=int, default=20,
                        help="random networks trained per evaluation model and evaluation (0: no evaluation)")
    parser.add_argument("--epoch_eval_train", type=int, default=defaults["epoch_eval_train"],
                        help=defaults["epoch_eval_train_help"])
    parser.add_argument("--Iteration", type=int, default=defaults["Iteration"], help="distillation iterations")
    parser.add_argument("--lr_img", type=POSITIVE, default=defaults["lr_img"],
                        help="learning rate of the synthetic images (SGD, momentum 0.5)")
    parser.add_argument("--lr_net", type=POSITIVE, default=0.01, help=defaults["lr_net_help"])
    parser.add_argument("--batch_real", type=int, default=256, help="real images per class per step")
    parser.add_argument("--batch_train", type=int, default=256, help=defaults["batch_train_help"])
    parser.add_argument("--init", default=defaults["init"], metavar="|".join(INITS),
                        help="how the synthetic images start: noise (standard normal) or real (random real images)")
    parser.add_argument("--dsa_strategy", default=defaults["dsa_strategy"], metavar="OPS",
                        help=f"{defaults['dsa_strategy_help']}; OPS joins any of {', '.join(DSA_OPS)} with '_' "
                        "(one op drawn per class and step), or 'none'")
    parser.add_argument("--save_path", default=None,
                        help="output folder (default: condensed/<dataset>/<method>/IPC<ipc>; the CLoM or "
                        "original_method sub-folders are appended)")
    parser.add_argument("--dis_metric", default="ours", metavar="|".join(METRICS), help=defaults["dis_metric_help"])
    parser.add_argument("--gpu", default="0", type=device_name,
                        help="CUDA card number, or 'cpu' (the CPU is used when there is no CUDA)")
    add_runtime_flags(parser)
    _add_clom_flags(parser)
    _add_run_flags(parser)
    return parser


def _add_clom_flags(parser: argparse.ArgumentParser) -> None:
    clom = parser.add_argument_group("CLoM (contrastive loss of pre-trained models)")
    clom.add_argument("--CLoM", action="store_true", help="add the CLoM loss")
    clom.add_argument("--CLoM_distance", default="ce", metavar="|".join(DISTANCES),
                      help="ce: cross-entropy of an in-distribution pool (the paper's formula); cos: 1 - cosine of "
                      "features, any pool (out-of-distribution, foundation models); ce_plain: what the paper "
                      "code computes, alpha * CE(pool(synthetic), labels). Only with --CLoM")
    clom.add_argument("--alphas", type=FINITE, nargs="+", default=None, metavar="ALPHA",
                      help="loss weight per pool architecture, or one for all (default: none; needed with --CLoM)")
    clom.add_argument("--models_pool", nargs="+", default=None, metavar="ARCH",
                      help="architectures of the pre-trained pool (names as for --model), or foundation models "
                      "timm:<name>, open_clip:<name>, torchvision:<name> (default: none; needed with --CLoM)")
    clom.add_argument("--model_num", type=int, default=1,
                      help="pre-trained models per architecture (index_0 .. index_<n-1>)")
    clom.add_argument("--epoch", type=int, default=150, help="which saved epoch of the pool to load")
    clom.add_argument("--source_dataset", default=None, metavar="DATASET",
                      help="data set the pool was trained on (default: --dataset)")
    clom.add_argument("--CLoM_batch_size", type=int, default=256, help="real images per CLoM batch (0: all)")
    clom.add_argument("--CLoM_feature", default="embed", metavar="|".join(FEATURES),
                      help="features F for the cos distance: embed (the embedding) or logits (the outputs)")
    clom.add_argument("--CLoM_cache_gb", type=NON_NEGATIVE, default=4.0,
                      help="GiB of device memory for cached real features of the pool (beyond it they are "
                      "recomputed each step: same result, slower)")
    clom.add_argument("--CLoM_weights", nargs="*", default=None, metavar="NAME=PATH",
                      help="local weight files of foundation models in the pool (default: none; a PATH of "
                      "'download' fetches them)")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("reproducibility and long runs")
    run.add_argument("--random_seed", type=seed_int, default=None,
                     help="seed of every random draw (default: from the clock; logged and saved)")
    run.add_argument("--checkpoint_every", type=int, default=100, help="iterations between checkpoints")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in the save folder (its checkpoint, or more --num_exp); the settings "
                     "that shape the set, the device type (CPU or CUDA), --precision and --eager must be the saved "
                     "ones")
    run.add_argument("--stop_after", type=int, default=None, metavar="IT",
                     help="stop after iteration IT, with a checkpoint; continue later with --resume (default: "
                     "run to the end)")


def parse_weight_map(entries: list[str] | None) -> dict[str, str]:
    """['timm:resnet18=/path/w.pth', ...] -> {'timm:resnet18': '/path/w.pth'} (for --CLoM_weights)."""
    mapping: dict[str, str] = {}
    for entry in entries or []:
        name, sep, path = str(entry).partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UserError(f"--CLoM_weights expects <pool model>=<file, folder or 'download'>, e.g. "
                            f"timm:resnet18=/path/to/resnet18.safetensors; got {entry!r}")
        if not is_foundation_name(name):
            raise UserError(f"--CLoM_weights {entry!r}: only foundation models (timm:, open_clip:, torchvision:) "
                            "take weights this way")
        if name in mapping:
            raise UserError(f"--CLoM_weights names {name!r} twice")
        mapping[name] = path
    return mapping


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """The flags as settings."""
    clom = None
    if args.CLoM:
        clom = ClomOptions(distance=args.CLoM_distance, alphas=args.alphas, models_pool=args.models_pool,
                           model_num=args.model_num, epoch=args.epoch,
                           source_dataset=args.source_dataset or args.dataset, batch_size=args.CLoM_batch_size,
                           feature=args.CLoM_feature, cache_gb=args.CLoM_cache_gb,
                           weights=parse_weight_map(args.CLoM_weights))
    return DistillConfig(
        method=str(args.method).upper(), dataset=args.dataset, model=args.model, ipc=args.ipc,
        eval_mode=str(args.eval_mode).upper(), num_exp=args.num_exp, num_eval=args.num_eval,
        epoch_eval_train=args.epoch_eval_train, iterations=args.Iteration, lr_img=args.lr_img,
        lr_net=args.lr_net, batch_real=args.batch_real, batch_train=args.batch_train, init=args.init,
        dsa_strategy=args.dsa_strategy, dis_metric=args.dis_metric, data_path=args.data_path,
        save_path=args.save_path, download=not args.no_download, checkpoint_every=args.checkpoint_every,
        resume=args.resume, stop_after=args.stop_after, seed=args.random_seed, clom=clom,
        precision=args.precision, eager=args.eager)


def main(argv, description: str, defaults: dict, methods: tuple[str, ...], other_script: str) -> Path | None:
    """A DC/DSA or DM script: parse and check the flags, start or resume the run, distill."""
    args = parse_flags(get_args_parser(description, defaults), argv)
    if str(args.method).upper() not in methods:
        raise UserError(f"this script runs {' or '.join(methods)}, got --method {args.method!r} "
                        f"(use {other_script})")
    try:
        return _distill(args)
    except SettingError as err:  # the library names the setting; the user knows the flag
        raise UserError(f"{flag_of(err.setting)} {err.problem}") from None
    except SettingsDiffer as err:
        raise UserError(err.message(flag_of)) from None


def _distill(args: argparse.Namespace) -> Path | None:
    # Every setting is checked before anything is created: flags, the output path, the pool's files.
    cfg = config_from_args(args)
    check_config(cfg)
    files = RunFiles.for_config(cfg)
    check_output_path(files.folder, "--save_path")
    if cfg.clom is not None:
        check_pool(cfg.clom.source_dataset, list(cfg.clom.models_pool), cfg.clom.model_num, cfg.clom.epoch,
                   cfg.clom.pool_root, cfg.clom.weights)
    runtime = start_process(args.gpu, cfg.eager, cfg.precision)
    dist, device = runtime.dist, runtime.device
    logger = setup_logging(None, quiet=not dist.is_main)
    execution = Execution.of(runtime, cfg.iterations)
    with RunClaim(files, dist):  # the save folder is this run's until it ends
        started = start_or_resume(cfg, files, execution)
        if started is None:
            logger.info("%s is complete (%d experiments, same settings); nothing to resume", files.result,
                        cfg.num_exp)
            return files.result
        state, seed = started
        seed = fix_seed(dist, seed)
        data = load_dataset(cfg.dataset, cfg.data_path, device, normalize=True, download=cfg.download)
        clom = None if cfg.clom is None else build_clom_loss(
            cfg.clom, data.train, InputSpace.of(data.train), device, derive_seed(seed, "extra loss"))
        logger = setup_logging(files.log if dist.is_main else None, quiet=not dist.is_main)
        store = RunStore(files, cfg, seed, writes=dist.is_main, execution=execution)
        store.save_settings(vars(args))
        _log_start(logger, cfg, data, state, seed, device, files)
        if clom is not None:
            logger.info("CLoM: %s", clom.describe())
        logger.info("precision %s | fast paths %s", runtime.precision,
                    fast_paths_note(runtime, iterations=cfg.iterations))
        with runtime.autocast():
            return distill.run(cfg, distill.Resources(data, runtime, clom), store, state)


def _log_start(logger: logging.Logger, cfg: DistillConfig, data, state, seed: int, device, files: RunFiles) -> None:
    where = f"resuming at experiment {state.exp}, iteration {state.next_iteration}:" if state.resuming else "starting"
    logger.info("%s %s on %s, ipc %d | seed %d | device %s | save folder %s", where, cfg.method, data.spec.name,
                cfg.ipc, seed, device, files.folder)
    logger.info("settings: %s", cfg)
    logger.info("real images per class: %s | evaluation models: %s | DSA: %s", data.train.class_counts().tolist(),
                eval_model_pool(cfg.eval_mode, cfg.model), cfg.augmentation)
