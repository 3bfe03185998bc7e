"""Evaluate a saved synthetic set: train fresh networks on it, test them on the real test set.

    python validate.py --normalize_data --dataset CIFAR10 --model ConvNet --dsa --method DC --ipc 10 \
        --synthesis_data_path condensed/.../res_DC_CIFAR10_ConvNet_10ipc.pt

Reads data[0] of a res_*.pt (ours or the paper code's), logs test accuracy every --save_every epochs,
and reports the final and the best accuracy (mean ± std over --num_eval networks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from utils import distributed
from utils.augment import dsa_augment
from utils.data import default_data_path, load_dataset
from utils.engine import Schedule, TensorSource, train_and_test
from utils.io import atomic_torch_save, load_result_file, reserve_run_dir
from utils.misc import (
    UserError,
    check_positive,
    parse_int_list,
    resolve_seed,
    run_cli,
    seed_everything,
    setup_logging,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train fresh networks on a synthetic set and test them.")
    parser.add_argument("--dataset", default="CIFAR10")
    parser.add_argument("--model", default="ConvNet", help="architecture trained on the synthetic set")
    parser.add_argument("--method", default="DC", help="method that made the set (used in --save_model paths)")
    parser.add_argument("--ipc", type=int, default=10, help="images per class (used in --save_model paths)")
    parser.add_argument("--random_seed", type=int, default=None, help="network k uses seed+k; default: clock")
    parser.add_argument("--save_model", action="store_true",
                        help="save each network's best weights under "
                        "pretrained_model/<dataset>/<method>/IPC<ipc>/<model>/index_<k>/")
    parser.add_argument("--multigpu", default=None,
                        help="accepted for compatibility; one process uses one card. Use torchrun for several GPUs")
    parser.add_argument("--gpu", default="0", help="CUDA card number, or 'cpu'")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight_decay", type=float, default=0.0005)
    parser.add_argument("--save_every", type=int, default=50, help="test every N epochs")
    parser.add_argument("--lr_decay_step", default="500", help="epochs after which lr is multiplied by 0.1")
    parser.add_argument("--normalize_data", action="store_true",
                        help="train and test in normalized space (else in [0,1] pixel space)")
    parser.add_argument("--dsa", action="store_true", help="train with DSA augmentation")
    parser.add_argument("--dsa_strategy", default="color_crop_cutout_flip_scale_rotate")
    parser.add_argument("--synthesis_data_path", required=True, help="a res_*.pt file")
    parser.add_argument("--experiment", type=int, default=0, help="which entry of data[] to validate")
    parser.add_argument("--num_eval", type=int, default=1, help="fresh networks to train (mean ± std)")
    parser.add_argument("--data_path", default=None, help="folder of the data set files (default data/<dataset>)")
    parser.add_argument("--no_download", action="store_true", help="never try to download a missing data set")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    for value, name in ((args.epochs, "--epochs"), (args.save_every, "--save_every"),
                        (args.batch_size, "--batch_size"), (args.num_eval, "--num_eval")):
        check_positive(value, name, allow_zero=name == "--epochs")
    milestones = parse_int_list(args.lr_decay_step, "--lr_decay_step")
    dist, device = distributed.init_with_device(args.gpu)
    seed = distributed.broadcast_int(dist, resolve_seed(args.random_seed))
    seed_everything(seed)

    images, labels, content = load_result_file(args.synthesis_data_path, args.experiment)
    data = load_dataset(args.dataset, args.data_path or default_data_path(args.dataset), device,
                        normalize=args.normalize_data, download=not args.no_download)
    spec = data.spec
    if tuple(images.shape[1:]) != (spec.channel, *spec.im_size):
        raise UserError(f"{args.synthesis_data_path}: images are {tuple(images.shape[1:])} but {spec.name} is "
                        f"{(spec.channel, *spec.im_size)}; pass the --dataset the set was distilled from")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise UserError(f"{args.synthesis_data_path}: labels outside 0..{spec.num_classes - 1} of {spec.name}")
    images, labels = images.to(device), labels.to(device)
    # Synthetic sets live in normalized space (as the paper's methods produce them); without
    # --normalize_data the real test set is in pixel space, so map the synthetic images there too.
    if content.get("normalized", True) and not args.normalize_data:
        images = images * data.train.std.view(1, -1, 1, 1) + data.train.mean.view(1, -1, 1, 1)

    log_file = Path(args.synthesis_data_path).with_name(f"validate_{args.model}.log")
    logger = setup_logging(log_file if dist.is_main else None, quiet=not dist.is_main)
    logger.info("command: %s", " ".join(sys.argv))
    if distributed.multigpu_notice(args.multigpu):
        logger.info(distributed.multigpu_notice(args.multigpu))
    logger.info("seed %d | device %s | %s: %d synthetic images, %d test | normalized %s | dsa %s",
                seed, device, spec.name, len(labels), len(data.test), args.normalize_data, args.dsa)

    augment = None
    if args.dsa:
        strategy = args.dsa_strategy
        augment = lambda x, generator: dsa_augment(x, strategy, generator)
    schedule = Schedule(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                        weight_decay=args.weight_decay, milestones=tuple(milestones))
    result = train_and_test(args.model, TensorSource(images, labels), data.test, schedule,
                            [seed + k for k in range(args.num_eval)], channel=spec.channel,
                            num_classes=spec.num_classes, im_size=spec.im_size, device=device, augment=augment,
                            test_every=args.save_every, keep_best_states=args.save_model,
                            desc=f"validate {args.model}", dist=dist)
    for k, (final, best, epoch) in enumerate(zip(result.final, result.best, result.best_epoch)):
        logger.info("network %d: final test acc %.4f | best %.4f at epoch %d", k, final, best, epoch)
    logger.info("%s on %s (%d networks): final %s | best %s", args.model, Path(args.synthesis_data_path).name,
                args.num_eval, mean_std(result.final), mean_std(result.best))
    if args.save_model and dist.is_main:
        parent = Path("pretrained_model") / spec.name / args.method / f"IPC{args.ipc}" / args.model
        for k, state in enumerate(result.best_states):
            index, run_dir = reserve_run_dir(parent)
            path = run_dir / f"{spec.name}_{args.model}_best_epoch{result.best_epoch[k]}.pth"
            atomic_torch_save(state, path)
            logger.info("saved network %d's best weights to %s", k, path)
    distributed.barrier(dist)
    return result


def mean_std(values) -> str:
    values = np.asarray(values, dtype=float) * 100
    return f"{values.mean():.2f} ± {values.std():.2f}%"


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    sys.exit(run_cli(main))
