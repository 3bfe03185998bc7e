"""Does a run's result follow its starting images or its later draws? Both tools distil from the SAME starting
images, and one evaluator scores every set.

    python benchmarks/init_swap.py --paper-code <DDInterpreter checkout> --out runs/init_swap
    python benchmarks/init_swap.py --summarize runs/init_swap

For each --start_seeds s, the starting images are those of our run with --random_seed s (--Iteration 0 saves
them). From them: our tool with --random_seed d for each --draw_seeds d (its real batches, random networks and
CLoM draws come from d; d = s is our ordinary run of seed s), and the paper's code --repeats times (its draws
come from the clock; paper_code.py --start makes its noise draw return those images). The cell is
fidelity_paper.py's (default DC1+ce_plain: DC ipc 1, noise start, CLoM ce_plain with alpha 1000, the paper
code's `ce`), with its pool, budget and evaluator (validate.py, 5 ConvNets x 300 epochs with DSA).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from fidelity_paper import (  # noqa: E402
    BASES,
    PAPER_DISTANCE,
    add_eager_flag,
    eager,
    evaluate,
    parse_budgets,
    parse_cell,
    prepare,
    run,
)
from paper_code import is_paper_checkout  # noqa: E402


def starting_set(args, prepared, start_seed: str) -> Path:
    """Our run of seed `start_seed` stopped before its first update: its starting images."""
    base, _, _ = parse_cell(args.cell, args.alpha)
    folder = args.out / f"start_seed{start_seed}"
    found = list(folder.rglob("res_*.pt"))
    if not found:
        _, script, _, flags = BASES[base]
        run([sys.executable, str(ROOT / script), *prepared[args.dataset]["ours"], *flags, "--Iteration", "0",
             "--num_eval", "0", "--random_seed", start_seed, "--save_path", str(folder), *eager(args)], args.out,
            args.out / f"start_seed{start_seed}.log")
        found = list(folder.rglob("res_*.pt"))
    return found[0]


def distill_from(args, prepared, start: Path, tool: str, seed: str, name: str) -> Path:
    base, distance, alpha = parse_cell(args.cell, args.alpha)
    kind, script, _, flags = BASES[base]
    budget = parse_budgets(args.budgets)[args.dataset][kind]
    data = prepared[args.dataset]
    folder = args.out / name
    common = [*flags, "--num_eval", "0", "--save_path", str(folder)]
    if distance is not None:
        common += ["--CLoM", "--CLoM_distance", PAPER_DISTANCE[distance] if tool == "paper" else distance,
                   "--models_pool", "ConvNet", "--alphas", f"{alpha:g}", "--model_num", str(args.pool_size),
                   "--epoch", str(args.pool_epochs), "--source_dataset", data["name"], "--CLoM_batch_size", "8196"]
    if tool == "paper":
        cmd = [sys.executable, str(ROOT / "benchmarks/paper_code.py"), "--paper-code", str(args.paper_code),
               "--data", str(data["paper_data"]), "--seed", seed, "--start", str(start), script, "--dataset",
               data["name"], "--Iteration", str(budget - 1), *common]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-start", str(start), "--", str(ROOT / script),
               *data["ours"], "--Iteration", str(budget), "--random_seed", seed, *common, *eager(args)]
    run(cmd, args.out, args.out / f"{name}.log")
    return next(folder.rglob("res_*.pt"))


def one(args, prepared, starts: dict[str, Path], start_seed: str, tool: str, seed: str) -> None:
    name = f"start{start_seed}_{tool}_{'seed' if tool == 'ours' else 'repeat'}{seed}"
    record = args.out / f"{name}.json"
    if record.exists():
        return
    start = starts[start_seed]
    result = distill_from(args, prepared, start, tool, seed, name)
    final = evaluate(args, prepared, args.dataset, result, name)
    record.write_text(json.dumps({"start_seed": start_seed, "tool": tool, "seed": seed, "final": final,
                                  "cell": args.cell}))
    print(f"{name}: {100 * np.mean(final):.2f} ± {100 * np.std(final):.2f}%", flush=True)


def table(folder: Path) -> str:
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("start*_*.json"))
               if not p.name.endswith(".validate.json")]
    lines = ["| starting images of | ours, draws of seed: acc. (%) | paper's code, repeats: acc. (%) |",
             "|---|---|---|"]
    for start in sorted({r["start_seed"] for r in records}, key=int):
        mine = [r for r in records if r["start_seed"] == start]
        ours = ", ".join(f"{r['seed']}: {100 * np.mean(r['final']):.2f}" for r in mine if r["tool"] == "ours")
        paper = ", ".join(f"{100 * np.mean(r['final']):.2f}" for r in mine if r["tool"] == "paper")
        lines.append(f"| our seed {start} | {ours or '–'} | {paper or '–'} |")
    # Paired by starting set: for each start, the mean of our runs (whatever their draws) and of the paper code's
    # repeats; then the mean and std over the starts, so that every start weighs the same in both columns.
    means = {tool: [np.mean([100 * np.mean(r["final"]) for r in records if r["tool"] == tool and r["start_seed"] == s])
                    for s in starts if any(r["tool"] == tool and r["start_seed"] == s for r in records)]
             for tool in ("ours", "paper") for starts in [sorted({r["start_seed"] for r in records}, key=int)]}
    if means["ours"] and len(means["ours"]) == len(means["paper"]):
        lines.append(f"| mean over the starts | {np.mean(means['ours']):.2f} ± {np.std(means['ours']):.2f} "
                     f"| {np.mean(means['paper']):.2f} ± {np.std(means['paper']):.2f} |")
    return "\n".join(lines)


def child_start(argv: list[str]) -> None:
    """Our script argv[0] with argv[1:], its starting images replaced by those of the set `--child-start`."""
    import runpy

    import torch

    start, script = Path(argv[0]), argv[2]
    sys.path.insert(0, str(ROOT))
    from methods.DC_DSA_DM import distill

    images = torch.load(start, weights_only=True)["data"][0][0]
    distill.initial_images = lambda *a, **k: images.clone()
    sys.argv = [script, *argv[3:]]
    runpy.run_path(script, run_name="__main__")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child-start":
        child_start(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper-code", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dataset", default="Digits")
    parser.add_argument("--cell", default="DC1+ce_plain")
    parser.add_argument("--start_seeds", default="0,1")
    parser.add_argument("--draw_seeds", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=2, help="paper's code runs per starting set")
    parser.add_argument("--budgets", default="Digits:DC=200,DSA=10,DM=500;CIFARDigits:DC=50,DSA=2,DM=100")
    parser.add_argument("--alpha", type=float, default=1000.0)
    parser.add_argument("--pool_size", type=int, default=2)
    parser.add_argument("--pool_epochs", type=int, default=30)
    parser.add_argument("--num_eval", type=int, default=5)
    parser.add_argument("--eval_epochs", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2)
    add_eager_flag(parser)
    parser.add_argument("--summarize", type=Path)
    args = parser.parse_args()
    if args.summarize:
        print(table(args.summarize))
        return
    if not args.out or not args.paper_code or not is_paper_checkout(args.paper_code.resolve()):
        parser.error("give --out and --paper-code <a checkout of the paper's code>, or --summarize FOLDER")
    args.paper_code, args.out, args.datasets = args.paper_code.resolve(), args.out.resolve(), args.dataset
    prepared = prepare(args)
    starts = {s: starting_set(args, prepared, s) for s in args.start_seeds.split(",")}  # before the workers
    todo = [(s, "ours", d) for s in args.start_seeds.split(",") for d in args.draw_seeds.split(",")]
    todo += [(s, "paper", str(r)) for s in args.start_seeds.split(",") for r in range(args.repeats)]
    with ThreadPoolExecutor(args.jobs) as workers:
        for future in [workers.submit(one, args, prepared, starts, *job) for job in todo]:
            future.result()
    print(table(args.out))


if __name__ == "__main__":
    main()
