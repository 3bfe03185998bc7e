"""Train a pool of classifiers on an original data set (the models CLoM later uses).

    python train_original_models.py --normalize_data --dataset CIFAR10 --model ConvNet --num 10

Writes pretrained_model/<dataset>/original/<model>/index_<k>/<dataset>_<model>_original_epoch<e>.pth
(state_dicts) every --save_every epochs, and model_info.json beside them (data set, input space, seed,
test accuracy at each saved epoch). k is the first free index, so earlier pools are never overwritten.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from utils import distributed
from utils.cli import (
    check_at_least,
    check_output_path,
    fix_seed,
    parse_flags,
    parse_int_list,
    run_cli,
    start_process,
    training_parser,
)
from utils.data import load_dataset
from utils.engine import EpochHook, Schedule, build_seeded_network, evaluate_models, train_models
from utils.errors import UserError
from utils.io import (
    POOL_INFO_NAME,
    RunDirClaims,
    atomic_json_save,
    atomic_torch_save,
    pool_arch_dir,
    pool_checkpoint_path,
)
from utils.log import setup_logging
from utils.runtime import fast_paths_note, training_steps
from utils.seeding import make_generator


class NonFiniteTrainingError(UserError):
    """A model's weights became nan/inf (its loss diverged); the checkpoints saved before are kept."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = training_parser(__doc__, epochs=150, weight_decay=0.005, save_every=1,
                             save_every_help="save a checkpoint (and test) every N epochs", lr_decay_step="50,100",
                             seed_help="base seed: model k uses seed+k (default: from the clock; logged and saved)")
    # --num_models: the same flag under a name torchrun's own parser does not mistake for its --numa-binding
    parser.add_argument("--num", "--num_models", dest="num", type=int, default=1, help="how many models to train")
    parser.add_argument("--save_root", default="pretrained_model", help="root folder of saved pools")
    parser.add_argument("--no_stack", action="store_true",
                        help="never train the models as one stacked ensemble (by default only sets of one batch are "
                             "stacked, on CUDA: a full data set trains one model after another anyway)")
    return parser


def check_args(args) -> list[int]:
    check_at_least(args.num, "--num", 1)
    check_at_least(args.epochs, "--epochs", 0)
    check_at_least(args.batch_size, "--batch_size", 1)
    check_at_least(args.save_every, "--save_every", 1)
    return parse_int_list(args.lr_decay_step, "--lr_decay_step")


def main(argv=None) -> None:
    args = parse_flags(get_args_parser(), argv)
    milestones = check_args(args)
    check_output_path(args.save_root, "--save_root")
    runtime = start_process(args.gpu, args.eager, args.precision)
    dist, device = runtime.dist, runtime.device
    seed = fix_seed(dist, args.random_seed)
    data = load_dataset(args.dataset, args.data_path, device, normalize=args.normalize_data,
                        download=not args.no_download)

    # Index folders are reserved with an atomic mkdir (so concurrent runs never collide) by rank 0, which
    # locks each for the whole run (a pool loader then knows it is still being trained) and hands model m
    # its folder; under torchrun the models are split across ranks.
    arch_dir = pool_arch_dir(data.spec.name, args.model, args.save_root)
    claims = RunDirClaims(arch_dir, args.num if dist.is_main else 0, "--save_root")
    try:
        indexes = distributed.broadcast_object(dist, [k for k, _, _ in claims.claims] if dist.is_main else None)
        _train_pool(args, milestones, runtime, seed, data, arch_dir, indexes)
    finally:
        claims.release()


def _train_pool(args, milestones: list[int], runtime, seed: int, data, arch_dir, indexes: list[int]) -> None:
    spec, dist, device = data.spec, runtime.dist, runtime.device
    my_models = distributed.split_range(args.num, dist)
    runs = [(indexes[m], arch_dir / f"index_{indexes[m]}") for m in my_models]
    first, last = (runs[0][0], runs[-1][0]) if runs else (0, 0)
    log_file = arch_dir / f"train_index_{first}-{last}.log" if runs else None
    logger = setup_logging(log_file, quiet=not dist.is_main)
    logger.info("command: %s", " ".join(sys.argv))
    if distributed.multigpu_notice(args.multigpu):
        logger.info(distributed.multigpu_notice(args.multigpu))
    logger.info("seed %d | device %s | %s train %d test %d | normalized %s | models %s", seed, device, spec.name,
                len(data.train), len(data.test), data.normalized, [index for index, _ in runs])
    if not runs:
        distributed.barrier(dist)
        return

    seeds = [seed + m for m in my_models]
    models = [build_seeded_network(args.model, spec.channel, spec.num_classes, spec.im_size, s, device)
              for s in seeds]
    generators = [make_generator(s, device) for s in seeds]
    infos = [_model_info(args, spec, data, index, s) for (index, _), s in zip(runs, seeds)]
    for (_, run_dir), info in zip(runs, infos):
        atomic_json_save(info, run_dir / POOL_INFO_NAME)

    def save_and_test(epoch: int, ids: list[int], trained) -> None:
        # Called after every epoch: a diverged model stops the run at once (its saved epochs are kept).
        for slot, model in zip(ids, trained):
            if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
                index = runs[slot][0]
                saved = infos[slot]["epochs_saved"]
                raise NonFiniteTrainingError(
                    f"the training loss of index_{index} became non-finite: its weights are NaN/inf after epoch "
                    f"{epoch}; stopped (checkpoints saved before are kept: epochs {saved or 'none'} in "
                    f"{runs[slot][1]}); try a smaller --lr")
        if epoch % args.save_every and epoch != args.epochs:
            return
        accuracies = evaluate_models(trained, data.test)
        for slot, model, acc in zip(ids, trained, accuracies):
            index, run_dir = runs[slot]
            atomic_torch_save(model.state_dict(), pool_checkpoint_path(spec.name, args.model, index, epoch,
                                                                        args.save_root))
            infos[slot]["test_acc"][str(epoch)] = acc
            infos[slot]["epochs_saved"].append(epoch)
            atomic_json_save(infos[slot], run_dir / POOL_INFO_NAME, overwrite=True)
            logger.info("index_%d epoch %d test acc %.4f", index, epoch, acc)

    schedule = Schedule(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                        weight_decay=args.weight_decay, milestones=tuple(milestones))
    # All the models, not this rank's share: the choice (and so the weights) must not depend on torchrun's split.
    steps = training_steps(args.num, args.epochs, len(data.train), args.batch_size)
    logger.info("precision %s | fast paths %s", runtime.precision, fast_paths_note(runtime, steps=steps))
    start = time.time()
    if args.epochs == 0:
        save_and_test(0, list(range(len(models))), models)
    else:
        with runtime.autocast():
            train_models(models, data.train, schedule, generators, hook=EpochHook(save_and_test, 1),
                         stack=False if args.no_stack else None, compiled=runtime.compiles_training(steps),
                         desc=f"train {args.model}")
    elapsed = time.time() - start
    for (_, run_dir), info in zip(runs, infos):  # the time this process took for all its models
        info.update(wall_time_s=round(elapsed, 2), models_in_this_process=len(models))
        atomic_json_save(info, run_dir / POOL_INFO_NAME, overwrite=True)
    final = [info["test_acc"][str(max(info["epochs_saved"]))] for info in infos]
    for (index, run_dir), acc in zip(runs, final):
        logger.info("done index_%d: final test acc %.4f -> %s", index, acc, run_dir)
    logger.info("trained %d model(s) in %.1f s; mean final test acc %.4f", len(models), elapsed,
                sum(final) / len(final))
    distributed.barrier(dist)


def _model_info(args, spec, data, index: int, seed: int) -> dict:
    """What CLoM needs to feed this model: its input space, classes and training provenance."""
    return {
        "dataset": spec.name, "architecture": args.model, "index": index, "seed": seed,
        "normalized": bool(data.normalized),
        "mean": [float(v) for v in data.train.mean.tolist()], "std": [float(v) for v in data.train.std.tolist()],
        "channel": spec.channel, "im_size": list(spec.im_size), "num_classes": spec.num_classes,
        "class_names": list(data.class_names), "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
        "lr_decay_step": args.lr_decay_step, "test_acc": {}, "epochs_saved": [],
        "torch_version": torch.__version__,
    }


if __name__ == "__main__":
    sys.exit(run_cli(main))
