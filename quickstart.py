"""Quickstart: the paper's pipeline on the bundled Digits data set, offline, in under 2 minutes on 2 CPU cores.

    python quickstart.py            # the short tour: DC, ipc 1, without and with CLoM
    python quickstart.py --full     # longer: a bigger pool, more iterations, more and longer evaluations
    python quickstart.py --method DM --ipc 10 --CLoM_distance cos --alpha 10     # another method or CLoM

1. trains a small pool of ConvNets          (train_original_models.py), the pre-trained models CLoM uses
2. distils --ipc images per class with DC   (methods/DC_DSA_DM/main.py; DM: main_DM.py) without and with CLoM
   (ce_plain, alpha 1000: what the paper's code computes for its README's `--CLoM_distance ce`), and draws as
   many random real images per class
3. validates the three sets under the same evaluation (validate.py: same networks, seeds, epochs and DSA
   augmentation) and prints a table with each set's IOR = acc(set) - acc(random real), in points.
Independent steps run side by side (--jobs). Everything is written under --out (a new folder per run): each
step's log in logs/, and the commands it ran, so every step can be repeated by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.cli import FINITE, device_name, int_at_least, parse_flags, run_cli, seed_int
from utils.io import new_output_dir

ROOT = Path(__file__).resolve().parent
# The short tour and --full: what each flag left unset takes.
PROFILES = {
    "short": {"pool_size": 2, "pool_epochs": 10, "iterations": 100, "num_eval": 3, "eval_epochs": 100},
    "full": {"pool_size": 3, "pool_epochs": 20, "iterations": 400, "num_eval": 5, "eval_epochs": 300},
}
SCRIPTS = {"DC": "methods/DC_DSA_DM/main.py", "DSA": "methods/DC_DSA_DM/main.py", "DM": "methods/DC_DSA_DM/main_DM.py"}


def _profile_help(text: str, name: str) -> str:
    return f"{text} (default: {PROFILES['short'][name]}; with --full: {PROFILES['full'][name]})"


def get_args_parser() -> argparse.ArgumentParser:
    from utils.cli import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="the longer tour: the --full values below (about 4x the time)")
    parser.add_argument("--out", default=None, help="output folder, must not exist (default: quickstart_runs/<time>)")
    parser.add_argument("--method", default="DC", choices=sorted(SCRIPTS), help="distillation method")
    parser.add_argument("--ipc", type=int_at_least(1), default=1, help="synthetic images per class")
    parser.add_argument("--init", default=None, choices=("noise", "real"),
                        help="how the synthetic images start (default: the method's: DC/DSA noise, DM real)")
    parser.add_argument("--pool_size", type=int_at_least(1), default=None,
                        help=_profile_help("ConvNets in the CLoM pool", "pool_size"))
    parser.add_argument("--pool_epochs", type=int_at_least(1), default=None,
                        help=_profile_help("epochs each pool ConvNet trains", "pool_epochs"))
    parser.add_argument("--iterations", type=int_at_least(0), default=None,
                        help=_profile_help("distillation iterations", "iterations"))
    parser.add_argument("--CLoM_distance", default="ce_plain", choices=("ce", "cos", "ce_plain"),
                        help="CLoM's distance (ce_plain: the paper code's `ce`, alpha * CE(pool(syn), y))")
    parser.add_argument("--alpha", type=FINITE, default=1000.0, help="CLoM weight (the paper's README: 1000)")
    parser.add_argument("--num_eval", type=int_at_least(1), default=None,
                        help=_profile_help("evaluation networks per set", "num_eval"))
    parser.add_argument("--eval_epochs", type=int_at_least(1), default=None,
                        help=_profile_help("epochs each evaluation network trains", "eval_epochs"))
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of every step")
    parser.add_argument("--jobs", type=int_at_least(1), default=2,
                        help="steps run side by side, each with (CPU cores / jobs) threads; with --gpu, on that one "
                             "card (small runs leave it idle most of the time: several share it well)")
    parser.add_argument("--gpu", default="0", type=device_name,
                        help="CUDA card number, or 'cpu' (the CPU is used when there is no CUDA)")
    return parser


@dataclass
class Step:
    name: str
    script: str
    argv: list[str]
    after: tuple[str, ...] = ()  # steps that must finish first

    def command(self) -> str:
        return f"python {self.script} {shlex.join(self.argv)}"


def run_steps(steps: list[Step], cwd: Path, jobs: int) -> None:
    """Run the steps as the suite's command lines, up to `jobs` at a time, each once the steps it needs are
    done; their output goes to cwd/logs/. The first failure stops the others and exits with its status."""
    logs = cwd / "logs"
    logs.mkdir()
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    start, pending, running, done = time.time(), list(steps), {}, set()
    try:
        while pending or running:
            for step in [s for s in pending if all(d in done for d in s.after)][: jobs - len(running)]:
                log = logs / f"{step.name.replace(' ', '_').replace('+', 'plus')}.txt"
                print(f"[{time.time() - start:4.0f} s] start {step.name}: $ {step.command()}", flush=True)
                with open(log, "w") as handle:
                    proc = subprocess.Popen([sys.executable, str(ROOT / step.script), *step.argv], cwd=cwd, env=env,
                                            stdout=handle, stderr=subprocess.STDOUT)
                pending.remove(step)
                running[step.name] = (proc, time.time(), log)
            time.sleep(0.1)
            for name, (proc, began, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                if proc.returncode != 0:
                    tail = log.read_text().strip().splitlines()[-5:]
                    print(f"{name} failed (exit status {proc.returncode}); the end of {log}:", *tail, sep="\n",
                          file=sys.stderr)
                    raise SystemExit(proc.returncode)
                done.add(name)
                print(f"[{time.time() - start:4.0f} s] done  {name} ({time.time() - began:.0f} s)", flush=True)
    finally:
        for proc, _, _ in running.values():  # only on failure or Ctrl-C: the other steps stop too
            proc.terminate()


def main(argv=None) -> list[tuple[str, float, float]]:
    args = parse_flags(get_args_parser(), argv)
    for name, value in PROFILES["full" if args.full else "short"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    out = new_output_dir(Path(args.out or Path("quickstart_runs") / time.strftime("%Y%m%d-%H%M%S")),
                         "--out").resolve()
    common = ["--dataset", "Digits", "--random_seed", str(args.seed), "--gpu", args.gpu]
    method = [*common, "--method", args.method, "--ipc", str(args.ipc), "--num_eval", "0", "--batch_real", "64",
              *(["--init", args.init] if args.init else [])]
    clom = f"{args.method} + CLoM ({args.CLoM_distance})"
    sets = {  # name -> (script, save_path, flags, steps it needs), in the table's order
        "random real": (SCRIPTS["DM"], "random_real", [*common, "--ipc", str(args.ipc), "--init", "real",
                                                       "--num_eval", "0", "--Iteration", "0"], ()),
        args.method: (SCRIPTS[args.method], "plain", [*method, "--Iteration", str(args.iterations)], ()),
        clom: (SCRIPTS[args.method], "clom", [
            *method, "--Iteration", str(args.iterations), "--CLoM", "--CLoM_distance", args.CLoM_distance,
            "--models_pool", "ConvNet", "--model_num", str(args.pool_size), "--epoch", str(args.pool_epochs),
            "--alphas", str(args.alpha), "--CLoM_batch_size", "0"], ("pool",)),
    }
    # the queue: the pool and the plain distillation first (CLoM waits for the pool), the quick ones last
    queue = [args.method, clom, "random real"]
    steps = [Step("pool", "train_original_models.py", [
        *common, "--model", "ConvNet", "--normalize_data", "--num", str(args.pool_size), "--epochs",
        str(args.pool_epochs), "--save_every", str(args.pool_epochs), "--lr_decay_step", ""])]
    reports, validations = {}, []
    for name in queue:
        script, folder, flags, after = sets[name]
        steps.append(Step(name, script, [*flags, "--save_path", folder], after))
        reports[name] = out / f"validate_{folder}.json"
        made_by = "DM" if folder == "random_real" else args.method
        synthetic_set = Path(folder) / _result_folder(flags) / f"res_{made_by}_Digits_ConvNet_{args.ipc}ipc.pt"
        validations.append(Step(f"validate {name}", "validate.py", [
            *common, "--normalize_data", "--model", "ConvNet", "--dsa", "--synthesis_data_path", str(synthetic_set),
            "--epochs", str(args.eval_epochs), "--save_every", str(args.eval_epochs), "--lr_decay_step",
            str(args.eval_epochs // 2), "--num_eval", str(args.num_eval), "--result_json", str(reports[name])],
            (name,)))
    steps += validations  # after every distillation in the queue: the long steps start first
    start = time.time()
    run_steps(steps, out, max(1, args.jobs))
    accs = {name: 100 * np.asarray(json.loads(reports[name].read_text())["final"]) for name in sets}
    rows = [(name, float(a.mean()), float(a.std())) for name, a in accs.items()]
    print(f"\nDigits, {args.ipc} image(s) per class, {args.iterations} iterations; each set trains {args.num_eval} "
          f"ConvNets {args.eval_epochs} epochs with DSA ({time.time() - start:.0f} s in all; outputs in {out})")
    print(f"{'synthetic set':22s} {'test accuracy':>15s} {'IOR (points)':>13s}")
    for name, mean, std in rows:
        ior = "–" if name == "random real" else f"{mean - rows[0][1]:+.2f}"
        print(f"{name:22s} {mean:8.2f} ± {std:4.2f}% {ior:>13s}")
    return rows


def _result_folder(extra: list[str]) -> str:
    """Where a distillation puts the set under its --save_path: original_method/, or the paper code's CLoM
    folders (here for one ConvNet pool trained on Digits)."""
    if "--CLoM" not in extra:
        return "original_method"
    value = lambda flag: extra[extra.index(flag) + 1]
    return (f"CLoM/{value('--CLoM_distance')}_distance/Digits->Digits/MP['ConvNet']_Nm[{value('--model_num')}]_"
            f"Epoch[{value('--epoch')}]/alphas['ConvNet']->{[float(value('--alphas'))]}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
