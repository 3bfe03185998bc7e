# ruff: noqa: E402  (the repository root goes on sys.path before the project's imports)
"""MTT dataset distillation (matching training trajectories), optionally with the CLoM loss of pre-trained models;
the experts themselves can be the pool.

    python methods/MTT/distill.py --dataset=CIFAR10 --ipc=10 --syn_steps=30 --expert_epochs=2 --max_start_epoch=20 \\
        --zca --lr_img=1000 --lr_lr=1e-05 --lr_teacher=0.01 --buffer_path=buffers --data_path=data/CIFAR10 \\
        --CLoM --CLoM_distance cos --CLoM_experts 10 --alphas 1000

Reads the experts buffer.py wrote under <buffer_path>/<dataset>/<model>/ (MTT's layout; MTT's own buffers too).
Writes condensed/<dataset>/MTT/IPC<ipc>/.../res_MTT_<dataset>_<model>_<ipc>ipc.pt (the suite's layout, plus the
learned 'syn_lr' of each experiment, which validate.py trains with), PNG grids, a log, and a checkpoint every
--checkpoint_every iterations (--resume continues an interrupted run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, from any folder

from methods.clom import ClomLoss, ClomOptions, build_clom_loss, resolve_alphas
from methods.DC_DSA_DM.config import EVAL_POOLS
from methods.DC_DSA_DM.flags import FLAG_OF as DC_FLAG_OF
from methods.DC_DSA_DM.flags import _add_clom_flags, _add_run_flags, parse_weight_map
from methods.DC_DSA_DM.run_state import Execution, RunClaim, RunFiles, SettingsDiffer, start_or_resume
from methods.MTT import matching_run
from methods.MTT.config import EXPERT_POOL_PREFIX, PIX_INITS, MttConfig, check_config
from methods.MTT.expert_set import ExpertSet, expert_pool
from methods.MTT.flags import true_or_false
from methods.MTT.replay_buffer import (
    buffer_dir,
    buffer_files,
    check_zca_matches,
    load_experts,
    missing_buffer_message,
    stray_files,
)
from methods.MTT.trajectory_matching import FlatNetwork
from networks import build_network, list_networks
from utils.augment import DEFAULT_DSA_STRATEGY, DSA_OPS
from utils.cli import (
    POSITIVE,
    HelpFormatter,
    add_data_flags,
    add_runtime_flags,
    check_output_path,
    device_name,
    fix_seed,
    parse_flags,
    run_cli,
    start_process,
)
from utils.data import get_dataset_spec, load_dataset
from utils.data.zca import ZCA_EPS, zca_whiten_dataset
from utils.errors import SettingError, UserError
from utils.io import safe_torch_load
from utils.log import setup_logging
from utils.pools import InputSpace, check_pool
from utils.seeding import derive_seed

FLAG_OF = {**DC_FLAG_OF, "clom.models_pool": "--models_pool (or --CLoM_experts)",
           "clom.model_num": "--model_num (or --CLoM_experts)", "clom.epoch": "--epoch (or --CLoM_expert_epoch)"}


def flag_of(setting: str) -> str:
    return FLAG_OF.get(setting, f"--{setting}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_flags(parser)
    parser.add_argument("--model", default="ConvNet", metavar="NAME",
                        help=f"network of the experts and the student: {', '.join(list_networks())}")
    parser.add_argument("--ipc", type=int, default=1, help="synthetic images per class")
    parser.add_argument("--eval_mode", default="S", metavar="MODE",
                        help="S: the --model without BatchNorm, SS: the --model; or a pool of architectures: "
                        + "; ".join(f"{mode}: {' '.join(models)}" for mode, models in EVAL_POOLS.items()))
    parser.add_argument("--num_eval", type=int, default=5, help="networks trained per evaluation (0: none)")
    parser.add_argument("--eval_it", type=int, default=100, help="evaluate every this many iterations (and the last)")
    parser.add_argument("--epoch_eval_train", type=int, default=1000, help="epochs of each evaluation network")
    parser.add_argument("--Iteration", type=int, default=5000, help="distillation iterations")
    parser.add_argument("--lr_img", type=POSITIVE, default=1000.0,
                        help="learning rate of the images (SGD, momentum 0.5)")
    parser.add_argument("--lr_lr", type=POSITIVE, default=1e-05,
                        help="learning rate of the learned student lr syn_lr (SGD, momentum 0.5)")
    parser.add_argument("--lr_teacher", type=POSITIVE, default=0.01, help="syn_lr's starting value")
    parser.add_argument("--lr_init", type=POSITIVE, default=0.01, help="accepted for MTT's commands; unused, as there")
    parser.add_argument("--batch_real", type=int, default=256, help="accepted for MTT's commands; unused, as there")
    parser.add_argument("--batch_syn", type=int, default=None,
                        help="synthetic images per student step (default: all of them)")
    parser.add_argument("--batch_train", type=int, default=256, help="batch size of the evaluation networks")
    parser.add_argument("--pix_init", default="real", choices=PIX_INITS,
                        help="how the images start: random real images, or noise")
    parser.add_argument("--dsa", type=true_or_false, default=True, metavar="True|False",
                        help="DSA augmentation in the student steps and the evaluations")
    parser.add_argument("--dsa_strategy", default=DEFAULT_DSA_STRATEGY, metavar="OPS",
                        help=f"DSA ops joined with '_' (one drawn per batch): any of {', '.join(DSA_OPS)}")
    parser.add_argument("--zca", action="store_true",
                        help=f"ZCA-whitened images (kornia, eps {ZCA_EPS}), as the experts must have been trained")
    parser.add_argument("--buffer_path", default="./buffers", help="root folder of the expert buffers")
    parser.add_argument("--expert_epochs", type=int, default=3,
                        help="the target is the expert this many epochs after the start")
    parser.add_argument("--syn_steps", type=int, default=20, help="student SGD steps on the synthetic set")
    parser.add_argument("--max_start_epoch", type=int, default=25, help="start epochs are drawn from 0 .. this - 1")
    parser.add_argument("--load_all", action="store_true",
                        help="draw an expert uniformly each iteration (else every expert once per pass, shuffled)")
    parser.add_argument("--max_files", type=int, default=None, help="read only this many buffer files (default: all)")
    parser.add_argument("--max_experts", type=int, default=None,
                        help="read only the first this many experts of each file (default: all)")
    parser.add_argument("--num_exp", type=int, default=1, help="experiments (synthetic sets) to distill")
    parser.add_argument("--save_path", default=None,
                        help="output folder (default: condensed/<dataset>/MTT/IPC<ipc>; the CLoM or original_method "
                        "sub-folders are appended)")
    parser.add_argument("--gpu", default="0", type=device_name,
                        help="CUDA card number, or 'cpu' (the CPU is used when there is no CUDA)")
    add_runtime_flags(parser)
    _add_clom_flags(parser)
    experts = parser.add_argument_group("the experts as the CLoM pool")
    experts.add_argument("--CLoM_experts", type=int, default=None, metavar="K",
                         help="with --CLoM: the pool is the buffer's first K experts (instead of --models_pool, "
                         "--model_num, --epoch, --source_dataset) (default: none)")
    experts.add_argument("--CLoM_expert_epoch", type=int, default=None, metavar="E",
                         help="with --CLoM_experts: the experts' weights after epoch E (default: their last epoch)")
    _add_run_flags(parser)
    return parser


def clom_options(args: argparse.Namespace, last_expert_epoch) -> ClomOptions | None:
    if not args.CLoM:
        if args.CLoM_experts is not None:
            raise UserError("--CLoM_experts needs --CLoM")
        return None
    common = dict(distance=args.CLoM_distance, alphas=args.alphas, batch_size=args.CLoM_batch_size,
                  feature=args.CLoM_feature, cache_gb=args.CLoM_cache_gb)
    if args.CLoM_experts is None:
        return ClomOptions(models_pool=args.models_pool, model_num=args.model_num, epoch=args.epoch,
                           source_dataset=args.source_dataset or args.dataset,
                           weights=parse_weight_map(args.CLoM_weights), **common)
    if args.models_pool or args.CLoM_weights:
        raise UserError("--CLoM_experts makes the experts the pool: leave out --models_pool and --CLoM_weights")
    if args.CLoM_experts < 1:
        raise UserError(f"--CLoM_experts must be >= 1, got {args.CLoM_experts}")
    epoch = args.CLoM_expert_epoch if args.CLoM_expert_epoch is not None else last_expert_epoch()
    return ClomOptions(models_pool=[EXPERT_POOL_PREFIX + args.model], model_num=args.CLoM_experts, epoch=epoch,
                       source_dataset=get_dataset_spec(args.dataset).name, **common)


def config_from_args(args: argparse.Namespace, clom: ClomOptions | None) -> MttConfig:
    return MttConfig(
        dataset=args.dataset, model=args.model, ipc=args.ipc, buffer_path=args.buffer_path,
        eval_mode=str(args.eval_mode).upper(), num_exp=args.num_exp, num_eval=args.num_eval, eval_it=args.eval_it,
        epoch_eval_train=args.epoch_eval_train, iterations=args.Iteration, lr_img=args.lr_img, lr_lr=args.lr_lr,
        lr_teacher=args.lr_teacher, batch_syn=args.batch_syn, batch_train=args.batch_train, pix_init=args.pix_init,
        dsa=args.dsa, dsa_strategy=args.dsa_strategy, zca=args.zca, syn_steps=args.syn_steps,
        expert_epochs=args.expert_epochs, max_start_epoch=args.max_start_epoch, load_all=args.load_all,
        max_files=args.max_files, max_experts=args.max_experts, data_path=args.data_path, save_path=args.save_path,
        download=not args.no_download, checkpoint_every=args.checkpoint_every, resume=args.resume,
        stop_after=args.stop_after, seed=args.random_seed, clom=clom, precision=args.precision, eager=args.eager)


def buffer_command(args: argparse.Namespace, dataset: str) -> str:
    """The buffer.py command that makes the experts this distillation looks for."""
    epochs = max(50, args.max_start_epoch - 1 + args.expert_epochs)
    parts = [f"python methods/MTT/buffer.py --dataset={dataset} --model={args.model} --train_epochs={epochs} "
             f"--num_experts=100 --buffer_path={args.buffer_path}"]
    if args.zca:
        parts.append("--zca")
    if args.data_path:
        parts.append(f"--data_path={args.data_path}")
    return " ".join(parts)


def main(argv=None) -> Path | None:
    args = parse_flags(get_args_parser(), argv)
    try:
        return _distill(args)
    except SettingError as err:
        raise UserError(f"{flag_of(err.setting)} {err.problem}") from None
    except SettingsDiffer as err:
        raise UserError(err.message(flag_of)) from None


def _distill(args: argparse.Namespace) -> Path | None:
    # Every setting is checked before anything is created: flags, the buffer, the output path, the pool.
    spec = get_dataset_spec(args.dataset)
    folder = buffer_dir(args.buffer_path, spec.name, args.model, args.zca)
    files = buffer_files(folder)
    if not files:
        raise UserError(missing_buffer_message(folder, buffer_command(args, spec.name)))
    cfg = config_from_args(args, clom_options(args, lambda: len(load_experts(files[0])[0]) - 1))
    check_config(cfg)
    check_zca_matches(files, cfg.zca)
    run_files = RunFiles.for_config(cfg)
    check_output_path(run_files.folder, "--save_path")
    if cfg.clom is not None and not cfg.experts_as_pool:
        check_pool(cfg.clom.source_dataset, list(cfg.clom.models_pool), cfg.clom.model_num, cfg.clom.epoch,
                   cfg.clom.pool_root, cfg.clom.weights)
    runtime = start_process(args.gpu, cfg.eager, cfg.precision)
    if runtime.dist.world > 1:
        raise UserError("MTT's distill.py runs in one process; start it without torchrun")
    logger = setup_logging(None)
    execution = Execution.of(runtime, cfg.iterations)
    with RunClaim(run_files, runtime.dist):
        started = start_or_resume(cfg, run_files, execution)
        if started is None:
            logger.info("%s is complete (%d experiments, same settings); nothing to resume", run_files.result,
                        cfg.num_exp)
            return run_files.result
        state, seed = started
        seed = fix_seed(runtime.dist, seed)
        _restore_learned_lrs(state, run_files.result)
        resources = _resources(cfg, runtime, files, seed)
        logger = setup_logging(run_files.log)
        store = matching_run.MttRunStore(run_files, cfg, seed, execution=execution)
        store.save_settings(vars(args))
        where = (f"resuming at experiment {state.exp}, iteration {state.next_iteration}:" if state.resuming
                 else "starting")
        logger.info("%s MTT on %s, ipc %d | seed %d | device %s | save folder %s", where, spec.name, cfg.ipc, seed,
                    runtime.device, run_files.folder)
        logger.info("settings: %s", cfg)
        logger.info("experts: %d from %d file(s) in %s, %d epochs each | zca %s", len(resources.experts),
                    len(resources.experts.files), folder, resources.experts.epochs, cfg.zca)
        if stray := stray_files(folder, files):
            logger.warning("not read (a file number before them is missing): %s", ", ".join(p.name for p in stray))
        if resources.clom is not None:
            logger.info("CLoM: %s", resources.clom.describe())
        with runtime.autocast():
            return matching_run.run(cfg, resources, store, state)


def _restore_learned_lrs(state, result: Path) -> None:
    """Finished experiments read back from a result file (to add experiments) get their learned syn_lr back."""
    if state.data and any(len(entry) < 3 for entry in state.data):
        learned = safe_torch_load(result, "result file").get("syn_lr") or []
        if len(learned) < len(state.data):
            raise UserError(f"{result} does not hold the learned syn_lr of its experiments; pick another --save_path")
        for entry, lr in zip(state.data, learned):
            entry[2:] = [float(lr)]


def _resources(cfg: MttConfig, runtime, files: list[Path], seed: int) -> matching_run.Resources:
    device = runtime.device
    data = load_dataset(cfg.dataset, cfg.data_path, device, normalize=not cfg.zca, download=cfg.download)
    pixels, to_pixels = data, None
    if cfg.zca:
        data, zca = zca_whiten_dataset(data)
        to_pixels = zca.to_pixels
    experts = ExpertSet(files, seed, cfg.load_all, cfg.max_files, cfg.max_experts)
    experts.check_epochs(cfg.max_start_epoch, cfg.expert_epochs)
    spec = data.spec
    student = FlatNetwork(build_network(cfg.model, spec.channel, spec.num_classes, spec.im_size))
    try:
        student.flatten(experts.experts[0][0])
    except ValueError as err:
        raise UserError(f"{experts.files[0]}: {err}; were the experts trained with this --model and --dataset?") \
            from None
    clom, on_pixels = None, False
    if cfg.clom is not None:
        clom_seed = derive_seed(seed, "extra loss")
        space = InputSpace.of(data.train)
        if cfg.experts_as_pool:
            pool = expert_pool(experts, cfg.model, cfg.clom.model_num, cfg.clom.epoch, spec, space, device)
            clom = ClomLoss(pool, resolve_alphas(cfg.clom.alphas, list(cfg.clom.models_pool)), cfg.clom, data.train,
                            space, device, clom_seed)
        else:  # a pool trained on pixels or normalized images: with ZCA it sees the images mapped back to pixels
            on_pixels = cfg.zca
            real = pixels.train if on_pixels else data.train
            clom = build_clom_loss(cfg.clom, real, InputSpace.of(real), device, clom_seed)
    return matching_run.Resources(data, runtime, experts, clom, to_pixels, on_pixels)


if __name__ == "__main__":
    sys.exit(run_cli(main))
