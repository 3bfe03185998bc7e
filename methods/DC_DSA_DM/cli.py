"""The command line shared by main.py (DC, DSA) and main_DM.py (DM): the paper's flags, one copy."""

import argparse

from methods.DC_DSA_DM import distill
from utils import distributed
from utils.misc import UserError


def get_args_parser(description: str, defaults: dict) -> argparse.ArgumentParser:
    """The paper's flags; `defaults` holds what differs between main.py (DC/DSA) and main_DM.py (DM)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--method", default=defaults["method"], help=defaults["method_help"])
    parser.add_argument("--dataset", default="CIFAR10")
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--ipc", type=int, default=defaults["ipc"], help="images per class")
    parser.add_argument("--eval_mode", default=defaults["eval_mode"],
                        help="S | SS | M | B | W | D | A | P | N: architectures the set is evaluated on")
    parser.add_argument("--num_exp", type=int, default=1, help="experiments (synthetic sets) to distill")
    parser.add_argument("--num_eval", type=int, default=20, help="random networks trained per evaluation")
    parser.add_argument("--epoch_eval_train", type=int, default=defaults["epoch_eval_train"],
                        help=defaults["epoch_eval_train_help"])
    parser.add_argument("--Iteration", type=int, default=defaults["Iteration"], help="distillation iterations")
    parser.add_argument("--lr_img", type=float, default=defaults["lr_img"],
                        help="learning rate of the synthetic images")
    parser.add_argument("--lr_net", type=float, default=0.01, help="learning rate of the networks")
    parser.add_argument("--batch_real", type=int, default=256, help="real images per class per step")
    parser.add_argument("--batch_train", type=int, default=256, help="batch size when training networks")
    parser.add_argument("--init", default=defaults["init"], help="noise | real: how the synthetic images start")
    parser.add_argument("--dsa_strategy", default=defaults["dsa_strategy"], help=defaults["dsa_strategy_help"])
    parser.add_argument("--data_path", default=None, help="folder of the data set (default data/<dataset>)")
    parser.add_argument("--save_path", default=None, help="output folder (default condensed/<dataset>/...)")
    parser.add_argument("--dis_metric", default="ours", help="ours | mse | cos: gradient distance (DC/DSA)")
    parser.add_argument("--gpu", default="0", help="CUDA card number, or 'cpu'")
    add_clom_and_run_arguments(parser)
    return parser


def add_clom_and_run_arguments(parser: argparse.ArgumentParser) -> None:
    clom = parser.add_argument_group("CLoM (contrastive loss of pre-trained models)")
    clom.add_argument("--CLoM", action="store_true", help="add the CLoM loss")
    clom.add_argument("--CLoM_distance", default="ce", help="ce | cos | ce_plain (the paper code's plain CE)")
    clom.add_argument("--alphas", type=float, nargs="+", default=None,
                      help="loss weight per pool architecture (or one for all)")
    clom.add_argument("--models_pool", nargs="+", default=None, help="architectures of the pre-trained pool")
    clom.add_argument("--model_num", type=int, default=1, help="pre-trained models per architecture")
    clom.add_argument("--epoch", type=int, default=150, help="which saved epoch of the pool to load")
    clom.add_argument("--source_dataset", default=None,
                      help="data set the pool was trained on (default: --dataset)")
    clom.add_argument("--CLoM_batch_size", type=int, default=256, help="real images per CLoM batch (0: all)")
    clom.add_argument("--CLoM_feature", default="embed", help="embed | logits: features for the cos distance")
    clom.add_argument("--CLoM_cache_gb", type=float, default=4.0,
                      help="GiB of device memory for cached real features of the pool")
    clom.add_argument("--CLoM_weights", nargs="*", default=None, metavar="NAME=PATH",
                      help="local weight files of foundation models in the pool")
    run = parser.add_argument_group("reproducibility and long runs")
    run.add_argument("--random_seed", type=int, default=None,
                     help="seed of every random draw (default: from the clock; logged and saved)")
    run.add_argument("--checkpoint_every", type=int, default=100, help="iterations between checkpoints")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint in the save folder")
    run.add_argument("--stop_after", type=int, default=None, metavar="IT",
                     help="stop after iteration IT (with a checkpoint); continue later with --resume")
    run.add_argument("--no_download", action="store_true", help="never try to download a missing data set")


def run_from_args(args: argparse.Namespace, methods: tuple[str, ...], other_script: str):
    """Check the method belongs to this script, set up the device (torchrun aware) and distill."""
    if str(args.method).upper() not in methods:
        raise UserError(f"this script runs {' or '.join(methods)}, got --method {args.method!r} "
                        f"(use {other_script})")
    dist, device = distributed.init_with_device(args.gpu)
    return distill.run(distill.DistillConfig.from_flags(vars(args)), device, vars(args), dist)
