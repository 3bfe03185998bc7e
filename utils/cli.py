"""What the command-line scripts share: flag groups, the start of a process, and the one-line error exit.

Only scripts (and methods/DC_DSA_DM/flags.py, the DC/DSA/DM scripts' flag layer) import this module;
library code takes explicit parameters and raises UserError.
"""

from __future__ import annotations

import argparse
import sys

import torch

from networks import list_networks
from utils import distributed
from utils.data import dataset_names
from utils.distributed import DistInfo
from utils.misc import UserError, resolve_seed, seed_everything
from utils.runtime import PRECISIONS, Runtime, make_runtime


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help that keeps the description's line breaks and shows every flag's default: '(default: X)' is
    appended unless the help already speaks of its default; an on/off flag reads '(default: off)'. A flag
    whose default is None says in its help what None means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default is None or isinstance(action, argparse._HelpAction):
            return text
        value = action.default
        if isinstance(value, (list, tuple)):
            shown = " ".join(map(str, value)) or "none"
        else:
            shown = str(value) or repr(value)
        return f"{text} (default: {shown.replace('%', '%%')})"


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="CIFAR10", metavar="NAME",
                        help=f"data set: {', '.join(dataset_names())} (Digits: bundled, offline)")
    parser.add_argument("--data_path", default=None, help="folder of the data set files (default: data/<dataset>)")
    parser.add_argument("--no_download", action="store_true", help="never try to download a missing data set")


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", default="0", help="CUDA card number, or 'cpu' (the CPU is used when there is no "
                        "CUDA)")
    parser.add_argument("--multigpu", default=None,
                        help="accepted for compatibility; one process uses one card: use torchrun for several "
                        "GPUs (default: none)")


def training_parser(description: str, *, epochs: int, weight_decay: float, save_every: int, save_every_help: str,
                    lr_decay_step: str, seed_help: str) -> argparse.ArgumentParser:
    """The flags train_original_models.py and validate.py share (with each script's defaults)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_data_flags(parser)
    parser.add_argument("--model", default="ConvNet", metavar="NAME",
                        help=f"architecture: {', '.join(list_networks())}")
    parser.add_argument("--random_seed", type=int, default=None, help=seed_help)
    add_device_flags(parser)
    parser.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    parser.add_argument("--batch_size", type=int, default=256, help="batch size")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate (SGD)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight_decay", type=float, default=weight_decay, help="SGD weight decay")
    parser.add_argument("--save_every", type=int, default=save_every, help=save_every_help)
    parser.add_argument("--lr_decay_step", default=lr_decay_step, metavar="EPOCHS",
                        help="epochs after which lr is multiplied by 0.1 (comma-separated; '' for none)")
    parser.add_argument("--normalize_data", action="store_true",
                        help="train and test on mean/std-normalized images (else [0,1] pixels)")
    add_runtime_flags(parser)
    return parser


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="fp32 | tf32 | bf16 (default: tf32 on CUDA, fp32 on a CPU)")
    parser.add_argument("--eager", action="store_true",
                        help="turn off the fast paths (compiled steps, CUDA graphs; on by default on CUDA only)")


def start_process(gpu: str, eager: bool = False, precision: str | None = None) -> Runtime:
    """Join torchrun's process group (if any), pick this process's device and how to run on it; let cuDNN
    pick its fastest kernels once for the fixed shapes every step repeats."""
    dist, device = distributed.init_with_device(gpu)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return make_runtime(device, dist, eager=eager, precision=precision)


def fix_seed(dist: DistInfo, seed: int | None) -> int:
    """The run's seed (the clock's when None; under torchrun every process takes rank 0's), applied to
    python, numpy and torch once."""
    seed = distributed.broadcast_int(dist, resolve_seed(seed))
    seed_everything(seed)
    return seed


def check_at_least(value: int, flag: str, low: int) -> None:
    if value < low:
        raise UserError(f"{flag} must be >= {low}, got {value}")


def run_cli(main, argv=None) -> int:
    """Run a script's main(argv); bad input becomes one line on stderr and exit status 2, never a traceback."""
    from networks.registry import UnknownNetworkError

    try:
        main(argv)
    except (UserError, UnknownNetworkError) as err:
        sys.stderr.write(f"error: {err}\n")  # the CLI's one line for bad input
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: results saved so far are kept\n")
        return 130
    return 0
