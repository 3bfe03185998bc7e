"""DC and DSA dataset distillation (gradient matching), optionally with the CLoM loss of pre-trained models.

    python methods/DC_DSA_DM/main.py --method DC --dataset CIFAR10 --model ConvNet --ipc 10 \
        --CLoM --CLoM_distance ce --models_pool ConvNet --alphas 1000 --model_num 1 --epoch 150 \
        --source_dataset CIFAR10 --CLoM_batch_size 8196

Writes condensed/<dataset>/<method>/IPC<ipc>/.../res_<method>_<dataset>_<model>_<ipc>ipc.pt, PNG grids, a log
and a checkpoint every --checkpoint_every iterations (--resume continues an interrupted run).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, from any folder

from methods.DC_DSA_DM import distill
from utils import distributed
from utils.misc import UserError, resolve_device, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DC / DSA dataset distillation (+ optional CLoM).")
    parser.add_argument("--method", default="DC", help="DC | DSA")
    parser.add_argument("--dataset", default="CIFAR10")
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--ipc", type=int, default=1, help="images per class")
    parser.add_argument("--eval_mode", default="S", help="S | SS | M | B | W | D | A | P | N (see SPEC §2)")
    parser.add_argument("--num_exp", type=int, default=1, help="experiments (synthetic sets) to distill")
    parser.add_argument("--num_eval", type=int, default=20, help="random networks trained per evaluation")
    parser.add_argument("--epoch_eval_train", type=int, default=300,
                        help="evaluation epochs without augmentation (with DSA or DC augmentation: 1000)")
    parser.add_argument("--Iteration", type=int, default=1000, help="distillation iterations")
    parser.add_argument("--lr_img", type=float, default=0.1, help="learning rate of the synthetic images")
    parser.add_argument("--lr_net", type=float, default=0.01, help="learning rate of the networks")
    parser.add_argument("--batch_real", type=int, default=256, help="real images per class per step")
    parser.add_argument("--batch_train", type=int, default=256, help="batch size when training networks")
    parser.add_argument("--init", default="noise", help="noise | real: how the synthetic images start")
    parser.add_argument("--dsa_strategy", default=None,
                        help=f"DSA augmentation (with --method DSA; default {distill.DEFAULT_DSA_STRATEGY})")
    parser.add_argument("--data_path", default=None, help="folder of the data set (default data/<dataset>)")
    parser.add_argument("--save_path", default=None, help="output folder (default condensed/<dataset>/...)")
    parser.add_argument("--dis_metric", default="ours", help="ours | mse | cos: gradient distance")
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


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    if str(args.method).upper() not in ("DC", "DSA"):
        raise UserError(f"--method must be DC or DSA for main.py, got {args.method!r} (DM: main_DM.py)")
    dist = distributed.init()
    device = distributed.device_for_rank(dist, args.gpu) if dist.enabled else resolve_device(args.gpu)
    distill.run(distill.DistillConfig.from_flags(vars(args)), device, vars(args), dist)


if __name__ == "__main__":
    sys.exit(run_cli(main))
