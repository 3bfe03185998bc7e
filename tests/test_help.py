"""--help of every script answers the questions a new user asks: every flag's default, the choices of the
flags that take names, which flags only DC/DSA use — and names no internal document."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import quickstart
import summarize
import train_original_models
import validate
from methods.DC_DSA_DM import main as dc_cli
from methods.DC_DSA_DM import main_DM as dm_cli
from networks import list_networks
from utils.augment import DSA_OPS
from utils.cli import HelpFormatter
from utils.data import dataset_names

PARSERS = {"train_original_models.py": train_original_models.get_args_parser, "validate.py": validate.get_args_parser,
           "main.py": dc_cli.get_args_parser, "main_DM.py": dm_cli.get_args_parser,
           "summarize.py": summarize.get_args_parser, "quickstart.py": quickstart.get_args_parser}


def flag_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each flag's help line as --help prints it (before wrapping)."""
    formatter = HelpFormatter(parser.prog)
    return {action.option_strings[0] if action.option_strings else action.dest:
            formatter._expand_help(action) for action in parser._actions
            if not isinstance(action, argparse._HelpAction)}


@pytest.mark.parametrize("script", list(PARSERS))
def test_every_flag_has_help_with_its_default(script):
    parser = PARSERS[script]()
    assert parser.formatter_class is HelpFormatter
    required = {action.option_strings[0] for action in parser._actions if action.required}
    for flag, text in flag_help(parser).items():
        assert text and ("default" in text.lower() or (flag in required and "required" in text)), (script, flag)
    full = parser.format_help()
    for internal in ("SPEC", "DESIGN", "see the spec"):
        assert internal not in full


def test_dc_and_dm_help_show_their_own_defaults():
    dc, dm = flag_help(dc_cli.get_args_parser()), flag_help(dm_cli.get_args_parser())
    for flag, dc_default, dm_default in (("--ipc", "1", "50"), ("--lr_img", "0.1", "1.0"), ("--eval_mode", "S", "SS"),
                                         ("--Iteration", "1000", "20000"), ("--init", "noise", "real"),
                                         ("--epoch_eval_train", "300", "1000")):
        assert dc[flag].endswith(f"(default: {dc_default})"), (flag, dc[flag])
        assert dm[flag].endswith(f"(default: {dm_default})"), (flag, dm[flag])
    assert "DC/DSA only" in dm["--dis_metric"] and "ignores" in dm["--dis_metric"]
    assert "DSA only" in dc["--dsa_strategy"]


@pytest.mark.parametrize("script", ["main.py", "main_DM.py", "validate.py", "train_original_models.py"])
def test_help_lists_the_choices(script):
    helps = flag_help(PARSERS[script]())
    assert all(name in helps["--dataset"] for name in dataset_names())
    assert all(name in helps["--model"] for name in list_networks())
    if script in ("main.py", "main_DM.py"):
        assert all(f"{mode}:" in helps["--eval_mode"] for mode in ("S", "SS", "M", "B", "W", "D", "A", "P", "N"))
        assert all(name in helps["--CLoM_distance"] for name in ("ce", "cos", "ce_plain"))
        assert all(op in helps["--dsa_strategy"] for op in DSA_OPS)
        assert all(metric in PARSERS[script]().format_help() for metric in ("ours|mse|cos", "noise|real"))
    if script == "validate.py":
        assert all(op in helps["--dsa_strategy"] for op in DSA_OPS)


def test_scripts_start_without_the_slow_imports(tmp_path):
    """Every script's start-up (sweeps start hundreds) stays free of torch._dynamo (torchvision's package
    import pulls it in: ~3 s) and of scikit-learn (~2 s; Digits reads its split from the cache once made)."""
    root = Path(__file__).resolve().parents[1]
    code = ("import sys, quickstart, summarize, train_original_models, validate\n"
            "import methods.DC_DSA_DM.main, methods.DC_DSA_DM.main_DM, methods.MTT.buffer, methods.MTT.distill\n"
            "from utils.data import load_dataset\n"
            "load_dataset('Digits', normalize=True)\n"
            "print(sorted(m for m in ('torch._dynamo', 'torchvision', 'sklearn') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(root), "XDG_CACHE_HOME": str(tmp_path)}
    for expected in (["sklearn"], []):  # the first run makes the Digits cache, the second reads it
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == repr(expected)
