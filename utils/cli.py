"""What the command-line scripts share: flag groups, the start of a process, and the one-line error exit.

Only scripts (and methods/DC_DSA_DM/flags.py, the DC/DSA/DM scripts' flag layer) import this module;
library code takes explicit parameters and raises UserError.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import torch

from networks import list_networks
from utils import distributed
from utils.data import dataset_names
from utils.distributed import DistInfo
from utils.errors import UserError
from utils.runtime import PRECISIONS, Runtime, make_runtime
from utils.seeding import resolve_seed, seed_everything


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


# ---------------------------------------------------------------- flag types (argparse type=), checked at parse
def finite_float(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False):
    """An argparse type: a finite float within [low, high] (open ends with low_open / high_open), so nan,
    inf and out-of-range values are refused where they are parsed, naming the flag."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
        if high is not None and (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


POSITIVE = finite_float(0, low_open=True)  # learning rates
NON_NEGATIVE = finite_float(0)  # weight decay, memory budgets
MOMENTUM = finite_float(0, 1, high_open=True)
FINITE = finite_float()  # loss weights


def int_at_least(low: int):
    """An argparse type: a whole number >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    parse.__name__ = "whole number"
    return parse


def seed_int(text: str) -> int:
    """--random_seed: a whole number that every generator accepts (|seed| < 2**63)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not -(2**63) < value < 2**63:
        raise argparse.ArgumentTypeError(f"must lie between -2**63 and 2**63, got {text}")
    return value


_DEVICE = re.compile(r"cpu|cuda(:\d+)?|\d+(,\d+)*", re.IGNORECASE)
_CARDS = re.compile(r"\d+(,\d+)*")


def device_name(text: str) -> str:
    """--gpu: 'cpu', a CUDA card number ('0'; '0,1' uses the first), 'cuda' or 'cuda:N'."""
    if not _DEVICE.fullmatch(str(text).strip()):
        raise argparse.ArgumentTypeError(f"expected a CUDA card number such as 0, 'cuda:1' or 'cpu', got {text!r}")
    return str(text).strip()


def card_list(text: str) -> str:
    """--multigpu: comma-separated CUDA card numbers such as 0,1."""
    if not _CARDS.fullmatch(str(text).replace(" ", "")):
        raise argparse.ArgumentTypeError(f"expected comma-separated card numbers such as 0,1, got {text!r}")
    return str(text).replace(" ", "")


class FlagError(UserError):
    """A command line argparse cannot parse: one line, like every other bad input."""


def parse_flags(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """parser.parse_args, but a bad command line raises FlagError (one line, exit status 2 through
    run_cli) instead of printing the usage block."""

    def one_line_error(message: str):
        raise FlagError(f"{message} (see {parser.prog} --help)")

    parser.error = one_line_error
    return parser.parse_args(argv)


def check_output_path(path: str | os.PathLike, what: str) -> None:
    """Before anything is created: can `path` be a folder we write in? (No file in the way, and its nearest
    existing ancestor is a writable folder.) The folder itself is made later, by utils.io.ensure_dir."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise UserError(f"{what} {path}: {parent} is a file, but a folder is expected there (move it or "
                                "pick another path)")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{what} {path}: cannot create or write there ({parent} is not writable); pick "
                                "another path")
            return


# ---------------------------------------------------------------- flag groups
def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="CIFAR10", metavar="NAME",
                        help=f"data set: {', '.join(dataset_names())} (Digits: bundled, offline)")
    parser.add_argument("--data_path", default=None, help="folder of the data set files (default: data/<dataset>)")
    parser.add_argument("--no_download", action="store_true", help="never try to download a missing data set")


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", default="0", type=device_name,
                        help="CUDA card number, or 'cpu' (the CPU is used when there is no CUDA)")
    parser.add_argument("--multigpu", default=None, type=card_list,
                        help="accepted for compatibility; one process uses one card: use torchrun for several "
                        "GPUs (default: none)")


def training_parser(description: str, *, epochs: int, weight_decay: float, save_every: int, save_every_help: str,
                    lr_decay_step: str, seed_help: str) -> argparse.ArgumentParser:
    """The flags train_original_models.py and validate.py share (with each script's defaults)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_data_flags(parser)
    parser.add_argument("--model", default="ConvNet", metavar="NAME",
                        help=f"architecture: {', '.join(list_networks())}")
    parser.add_argument("--random_seed", type=seed_int, default=None, help=seed_help)
    add_device_flags(parser)
    parser.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    parser.add_argument("--batch_size", type=int, default=256, help="batch size")
    parser.add_argument("--lr", type=POSITIVE, default=0.01, help="learning rate (SGD)")
    parser.add_argument("--momentum", type=MOMENTUM, default=0.9, help="SGD momentum")
    parser.add_argument("--weight_decay", type=NON_NEGATIVE, default=weight_decay, help="SGD weight decay")
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
        sys.stderr.write(f"error: {' '.join(str(err).split())}\n")  # the CLI's one line for bad input
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: results saved so far are kept\n")
        return 130
    return 0


def parse_int_list(text: str, what: str) -> list[int]:
    """'50,100' -> [50, 100]; '' -> []."""
    try:
        return [int(part) for part in str(text).replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise UserError(f"{what} must be comma-separated whole numbers such as '50,100', got {text!r}") from None
