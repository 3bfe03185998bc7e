"""DM dataset distillation (distribution matching), optionally with the CLoM loss of pre-trained models.

    python methods/DC_DSA_DM/main_DM.py --dataset CIFAR10 --model ConvNet --ipc 50 \\
        --CLoM --CLoM_distance cos --models_pool ConvNet --alphas 1000 --source_dataset CIFAR100

Same flags as main.py; the paper's DM defaults: ipc 50, eval_mode SS, epoch_eval_train 1000, Iteration
20000, lr_img 1.0, init real, DSA strategy color_crop_cutout_flip_scale_rotate ('none': no augmentation).
Writes condensed/<dataset>/DM/IPC<ipc>/.../res_DM_<dataset>_<model>_<ipc>ipc.pt, PNG grids, a log and a
checkpoint every --checkpoint_every iterations (--resume continues an interrupted run).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, from any folder

from methods.DC_DSA_DM import flags
from utils.augment import DEFAULT_DSA_STRATEGY
from utils.cli import run_cli

DEFAULTS = {
    "method": "DM", "method_help": "DM only (DC and DSA: main.py)", "ipc": 50, "eval_mode": "SS",
    "epoch_eval_train": 1000, "epoch_eval_train_help": "epochs of each evaluation network (DSA augmentation)",
    "Iteration": 20000, "lr_img": 1.0, "init": "real", "dsa_strategy": DEFAULT_DSA_STRATEGY,
    "dsa_strategy_help": "Siamese augmentation of the real and synthetic images, also used by the evaluations",
    "lr_net_help": "learning rate of the evaluation networks",
    "batch_train_help": "batch size of the evaluations",
    "dis_metric_help": "DC/DSA only (main.py): DM ignores it; accepted so that the paper's command lines run",
}


DESCRIPTION = __doc__


def get_args_parser():
    return flags.get_args_parser(DESCRIPTION, DEFAULTS)


def main(argv=None):
    return flags.main(argv, DESCRIPTION, DEFAULTS, ("DM",), "main.py for DC and DSA")


if __name__ == "__main__":
    sys.exit(run_cli(main))
