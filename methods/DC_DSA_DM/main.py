"""DC and DSA dataset distillation (gradient matching), optionally with the CLoM loss of pre-trained models.

    python methods/DC_DSA_DM/main.py --method DC --dataset CIFAR10 --model ConvNet --ipc 10 \\
        --CLoM --CLoM_distance ce --models_pool ConvNet --alphas 1000 --model_num 1 --epoch 150 \\
        --source_dataset CIFAR10 --CLoM_batch_size 8196

Writes condensed/<dataset>/<method>/IPC<ipc>/.../res_<method>_<dataset>_<model>_<ipc>ipc.pt, PNG grids, a log
and a checkpoint every --checkpoint_every iterations (--resume continues an interrupted run).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, from any folder

from methods.DC_DSA_DM import flags
from utils.augment import DEFAULT_DSA_STRATEGY
from utils.cli import run_cli

DEFAULTS = {
    "method": "DC", "method_help": "DC (gradient matching) or DSA (the same with Siamese augmentation); DM: "
    "main_DM.py", "ipc": 1, "eval_mode": "S", "epoch_eval_train": 300,
    "epoch_eval_train_help": "epochs of each evaluation network when it trains without augmentation; with DSA "
    "(--method DSA) or DC augmentation (MNIST; BatchNorm models) it trains 1000",
    "Iteration": 1000, "lr_img": 0.1, "init": "noise", "dsa_strategy": None,
    "dsa_strategy_help": f"DSA only: the Siamese augmentation (default: {DEFAULT_DSA_STRATEGY}; DC never augments)",
    "lr_net_help": "learning rate of the networks: the inner loop's and the evaluations'",
    "batch_train_help": "batch size of the inner loop and of the evaluations",
    "dis_metric_help": "DC/DSA: gradient distance: ours (per output channel 1 - cosine, summed), mse, cos",
}


DESCRIPTION = __doc__


def get_args_parser():
    return flags.get_args_parser(DESCRIPTION, DEFAULTS)


def main(argv=None):
    return flags.main(argv, DESCRIPTION, DEFAULTS, ("DC", "DSA"), "main_DM.py for DM")


if __name__ == "__main__":
    sys.exit(run_cli(main))
