"""Seconds per distillation iteration: the paper's own code vs this suite, whole commands, in one run.

Both tools run as they ship — the paper's methods/DC_DSA_DM/main.py / main_DM.py and ours — with the same flags on
the same CIFAR-10-format data (benchmarks/dsa_fidelity.py's CIFAR copy of Digits: 5000 images 3x32x32, written
as real CIFAR-10 pickles), evaluation off (--num_eval 0), in alternating child processes on one device. Each run
has the paper's full length (--Iteration 1000 for DC/DSA, 20000 for DM: what decides whether a run compiles), and
a child stops it after --iterations iterations. It times the start of every iteration (the paper code: its
per-iteration get_network call; ours: distill.method_iteration), synchronising CUDA first; the median interval
after --warmup iterations is printed, with paper / ours as a speed ratio (> 1: we are faster).

Two cases time whole commands instead (from process start to exit, as a user waits for them; seconds per case):
pool2x1 trains 2 ConvNets for 1 epoch (train_original_models.py --num 2 --epochs 1 --normalize_data), eval2x20
trains 2 networks for 20 epochs with DSA on a 10-images-per-class set (validate.py --dsa --epochs 20; the paper's
validate.py trains one network per command, so it runs twice, ours once with --num_eval 2).

The paper code is not part of this repository: pass a checkout of it (its repository root, holding
methods/DC_DSA_DM/ and utils_clom/). Nothing of it is changed on disk; its child process gets the run-time
stand-ins of paper_code.py (our data's tensors for its downloading loaders, .cuda() as the identity on a CPU,
the CCLoM class its main_DM.py imports), and get_network notes the time. CLoM cases give both tools one random ConvNet
"pre-trained" on CIFAR100 in the paper's layout (pretrained_model/CIFAR100/original/ConvNet/index_0/...).

    python benchmarks/bench_paper.py --paper-code ~/src/DDInterpreter                    # CPU cases
    python benchmarks/bench_paper.py --paper-code ~/src/DDInterpreter --cases DC10,DM50 --iterations 6
    python benchmarks/bench_paper.py --paper-code ~/src/DDInterpreter --cases pool2x1,eval2x20
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paper_code import install_stand_ins, is_paper_checkout

ROOT = Path(__file__).resolve().parents[1]

CLOM_COS = ["--CLoM", "--CLoM_distance", "cos", "--models_pool", "ConvNet", "--alphas", "1000", "--model_num", "1",
            "--epoch", "150", "--source_dataset", "CIFAR100", "--CLoM_batch_size", "8196"]
# case: (script, flags beyond --dataset/--data_path/--Iteration/--num_eval/--save_path)
CASES = {
    "DC1": ("main.py", ["--method", "DC", "--ipc", "1"]),
    "DC10": ("main.py", ["--method", "DC", "--ipc", "10"]),
    "DSA10": ("main.py", ["--method", "DSA", "--ipc", "10", "--init", "real",
                          "--dsa_strategy", "color_crop_cutout_flip_scale_rotate"]),
    "DC1+cos": ("main.py", ["--method", "DC", "--ipc", "1", *CLOM_COS]),
    "DC10+cos": ("main.py", ["--method", "DC", "--ipc", "10", *CLOM_COS]),
    "DM10": ("main_DM.py", ["--ipc", "10", "--init", "real", "--lr_img", "1",
                            "--dsa_strategy", "color_crop_cutout_flip_scale_rotate"]),
    "DM50": ("main_DM.py", ["--ipc", "50", "--init", "real", "--lr_img", "1",
                            "--dsa_strategy", "color_crop_cutout_flip_scale_rotate"]),
    "DM10+cos": ("main_DM.py", ["--ipc", "10", "--init", "real", "--lr_img", "1",
                                "--dsa_strategy", "color_crop_cutout_flip_scale_rotate", *CLOM_COS]),
}
# whole commands: case -> (script at the repository root, flags of both, the paper's commands timed, ours' extra
# flags, the paper's commands the case stands for: the timed ones' seconds are scaled up to these)
_EVAL = ["--normalize_data", "--dataset", "CIFAR10", "--model", "ConvNet", "--dsa", "--method", "DC", "--ipc", "10"]
WHOLE = {
    "pool2x1": ("train_original_models.py", ["--dataset", "CIFAR10", "--model", "ConvNet", "--normalize_data",
                                             "--epochs", "1", "--num", "2"], 1, [], 1),
    "eval2x20": ("validate.py", [*_EVAL, "--epochs", "20", "--save_every", "20"], 2, ["--num_eval", "2"], 2),
    # the paper's evaluation (eval_mode S): 20 networks x 1000 epochs; one of its 20 commands is timed, x 20
    "eval20x1000": ("validate.py", [*_EVAL, "--epochs", "1000", "--save_every", "1000"], 1, ["--num_eval", "20"], 20),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper-code", required=True, help="a checkout of the paper's repository (its root)")
    parser.add_argument("--cases", default="DC1,DM10,DC1+cos,DM10+cos", help=f"comma-separated, of {[*CASES, *WHOLE]}")
    parser.add_argument("--iterations", type=int, default=4, help="iterations timed per run (then it stops)")
    parser.add_argument("--warmup", type=int, default=1, help="iterations left out of the median (compiling)")
    parser.add_argument("--rounds", type=int, default=1, help="paper/ours pairs per case (alternating)")
    parser.add_argument("--epochs", type=int, default=None, help="whole-command cases: this many epochs instead")
    parser.add_argument("--extra", default="", help="more flags for both tools' distillations (e.g. a smaller "
                        "--batch_real)")
    parser.add_argument("--length", type=int, default=None,
                        help="--Iteration of every run instead of the paper's (1000 DC/DSA, 20000 DM; it decides "
                        "whether our run compiles on a CPU)")
    parser.add_argument("--work", default=None, help="folder for the data and the runs (default: a temp dir)")
    parser.add_argument("--child", choices=["paper", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--times", help=argparse.SUPPRESS)
    parser.add_argument("--synthetic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    paper = Path(args.paper_code).expanduser().resolve()
    if not is_paper_checkout(paper):
        sys.exit(f"bench_paper.py: {paper} is not a checkout of the paper's code "
                 "(no methods/DC_DSA_DM/main.py and utils_clom/); pass its root with --paper-code")
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES and c not in WHOLE]
    if unknown:
        sys.exit(f"bench_paper.py: unknown case(s) {unknown}; choose from {[*CASES, *WHOLE]}")
    if args.iterations < args.warmup + 1:
        sys.exit("bench_paper.py: --iterations must be at least --warmup + 1")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_paper_"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dsa_fidelity import write_cifar_digits

    data = write_cifar_digits(work / "cifar_digits")
    import torch

    args.synthetic = str(write_synthetic_set(work / "synthetic.pt", torch))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; torch {torch.__version__}; {args.iterations} iterations per run, median after "
          f"{args.warmup}; data: {data}")
    print(f"{'case':<10} {'paper s/it':>11} {'ours s/it':>10} {'speed-up':>9}")
    for case in cases:
        medians: dict[str, list[float]] = {"paper": [], "ours": []}
        for r in range(args.rounds):
            for tool in ("paper", "ours"):
                medians[tool].append(run_child(args, paper, tool, case, data, work / f"{case}_{tool}_{r}"))
        p, o = statistics.median(medians["paper"]), statistics.median(medians["ours"])
        unit = ""
        if case in WHOLE:
            unit = " (s, whole commands" + (f"; the paper's: {WHOLE[case][2]} of {WHOLE[case][4]} timed, scaled)"
                                            if WHOLE[case][4] > WHOLE[case][2] else ")")
        print(f"{case:<10} {p:>11.4f} {o:>10.4f} {p / o:>8.2f}x{unit}", flush=True)


def run_child(args, paper: Path, tool: str, case: str, data: Path, folder: Path) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    times = folder / "times.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--paper-code", str(paper), "--child", tool,
               "--case", case, "--data", str(data), "--times", str(times), "--iterations", str(args.iterations),
               "--synthetic", str(args.synthetic), *(["--epochs", str(args.epochs)] if args.epochs else []),
               *(["--length", str(args.length)] if args.length else []),
               *(["--extra", args.extra] if args.extra else [])]
    runs = WHOLE[case][2] if case in WHOLE and tool == "paper" else 1
    scale = WHOLE[case][4] / runs if case in WHOLE and tool == "paper" else 1
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        for _ in range(runs):
            done = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                break
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (folder / "log.txt").read_text().splitlines()[-15:]
        sys.exit(f"bench_paper.py: the {tool} run of {case} failed (exit {done.returncode}); "
                 f"its log {folder / 'log.txt'} ends:\n" + "\n".join(tail))
    if case in WHOLE:
        return seconds * scale
    starts = json.loads(times.read_text())
    intervals = [b - a for a, b in zip(starts, starts[1:])][args.warmup:]
    return statistics.median(intervals)


def child(args) -> None:
    """One whole command of one tool, in this process; writes the start time of every iteration to --times."""
    import torch

    if args.case in WHOLE:
        script, flags, _, ours_extra, _ = WHOLE[args.case]
        if args.epochs is not None:
            at = flags.index("--epochs")
            flags = [*flags[:at + 1], str(args.epochs), *flags[at + 2:]]
        flags = [*flags, *(["--synthesis_data_path", args.synthetic] if script == "validate.py" else [])]
        if args.child == "ours":
            flags = [*flags, *ours_extra, "--data_path", args.data]
    else:
        script, flags = CASES[args.case]
        length = str(args.length or (20000 if script == "main_DM.py" else 1000))
        flags = [*flags, "--dataset", "CIFAR10", "--data_path", args.data, "--Iteration", length,
                 "--num_eval", "0", "--save_path", "runs", *args.extra.split()]
    starts: list[float] = []

    def timed(fn):
        def wrapper(*a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            starts.append(time.perf_counter())
            if len(starts) > args.iterations:
                raise StopTiming
            return fn(*a, **k)
        return wrapper

    paper = Path(args.paper_code)
    if args.child == "paper":
        paper_utils = install_stand_ins(paper, Path(args.data))
        paper_utils.get_network = timed(paper_utils.get_network)
        if "--CLoM" in flags:
            from utils_clom.model_pool import get_network

            save_random_pool_model(get_network("ConvNet", 3, 100, (32, 32)), torch)
        main_path = paper / ("methods/DC_DSA_DM" if args.case in CASES else "") / script
    else:
        sys.path.insert(0, str(ROOT))
        from methods.DC_DSA_DM import distill
        from networks import build_network

        distill.method_iteration = timed(distill.method_iteration)
        if "--CLoM" in flags:
            save_random_pool_model(build_network("ConvNet", 3, 100, (32, 32)), torch)
        main_path = ROOT / ("methods/DC_DSA_DM" if args.case in CASES else "") / script
    sys.argv = [str(main_path), *flags]
    try:
        runpy.run_path(str(main_path), run_name="__main__")
    except StopTiming:
        pass
    Path(args.times).write_text(json.dumps(starts))


class StopTiming(BaseException):
    """Ends a child's run after its timed iterations (a BaseException: no handler of either tool takes it)."""


def write_synthetic_set(path: Path, torch) -> Path:
    """A random 10-images-per-class CIFAR-shaped set in the paper's result format {'data': [[images, labels]]}."""
    images = torch.randn(100, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save({"data": [[images, torch.arange(10).repeat_interleave(10)]], "accs_all_exps": {}}, path)
    return path


def save_random_pool_model(net, torch) -> None:
    """A stand-in pre-trained model where both tools look for it (relative to the working directory)."""
    path = Path("pretrained_model/CIFAR100/original/ConvNet/index_0/CIFAR100_ConvNet_original_epoch150.pth")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
