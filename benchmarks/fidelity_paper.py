"""Fidelity side by side: the paper's own code and this suite distil the same cells with the same flags and
budget, and ONE evaluator (this suite's validate.py) scores every set, both tools', against random real images.

    python benchmarks/fidelity_paper.py --paper-code <DDInterpreter checkout> --out runs/fidelity     # Digits 8x8
    python benchmarks/fidelity_paper.py --paper-code ... --out runs/fidelity32 --datasets CIFARDigits
    python benchmarks/fidelity_paper.py --summarize runs/fidelity [runs/fidelity32]

Cells (--cells, each <base>[+<distance>][@<alpha>]): DC1 (DC ipc 1, noise init, as both tools default), DSA10
and DM10 (ipc 10, real init), alone or with CLoM: +ce_plain is the paper code's `ce` (alpha * CE(pool(syn), y)),
+cos its `cos` (--CLoM_batch_size 8196: ours takes all real images when the set is smaller, the paper's code
draws 8196 with replacement), +ce our class-sum formula (ours only: the paper's code has none); @alpha
overrides --alpha. The default cells are the fidelity table's: DC1, DSA10, DM10, each alone and with
CLoM (DC/DSA: ce_plain, DM: cos). An alpha sweep is e.g. --tools ours --cells DM10,DM10+cos@1,DM10+cos@10.
CLoM's pool: --pool_size ConvNets trained --pool_epochs epochs on the real data by our
train_original_models.py, loaded by both tools from the same files (the paper's layout).

Data (--datasets): Digits (scikit-learn's 8x8 digits, our fixed split, 1198 train / 599 test) and CIFARDigits
(dsa_fidelity.py's CIFAR-10-format copy, 3x32x32, 5000 / 1000). The paper's scripts get the same normalized
tensors through paper_code.py's stand-ins. Budgets (--budgets) are image updates per run; the paper's loop
updates once more than its --Iteration says (it saves after the update of iteration --Iteration), so it gets
--Iteration N-1 where ours gets N. Each run is one process with one thread, --jobs at a time.

Evaluation: validate.py, --num_eval ConvNets x --eval_epochs with DSA (lr 0.01, x0.1 at half), evaluation
seed 0 for every set (the same initial networks for all), the final epoch's accuracy. "random real" rows are
--seeds random real subsets with the cell's images per class (validate.py --random_real's draw), evaluated the
same way; IOR = acc(set) - acc(random real), each a mean over the same evaluation networks. The paper's code
cannot be seeded (its network builder and its DSA reseed from the clock): its "seeds" are independent repeats;
ours are --random_seed.
Outputs under --out: one folder per run, <run>.json with its accuracies, and the table from --summarize.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))
from paper_code import is_paper_checkout, save_tensors  # noqa: E402

PAPER_DC, PAPER_DM = "methods/DC_DSA_DM/main.py", "methods/DC_DSA_DM/main_DM.py"
DSA = "color_crop_cutout_flip_scale_rotate"
# base cell: (method kind for the budget, script, ipc, flags of both tools)
BASES = {
    "DC1": ("DC", PAPER_DC, 1, ["--method", "DC", "--ipc", "1"]),
    "DSA10": ("DSA", PAPER_DC, 10, ["--method", "DSA", "--ipc", "10", "--init", "real", "--dsa_strategy", DSA]),
    "DM10": ("DM", PAPER_DM, 10, ["--ipc", "10", "--init", "real", "--dsa_strategy", DSA]),
}
# CLoM distances by our names -> the paper code's name (its `ce` computes our ce_plain; it has no formula ce)
PAPER_DISTANCE = {"ce_plain": "ce", "cos": "cos", "ce": None}
FIDELITY_CELLS = "DC1,DC1+ce_plain,DSA10,DSA10+ce_plain,DM10,DM10+cos"


def parse_cell(cell: str, default_alpha: float) -> tuple[str, str | None, float]:
    """'<base>[+<distance>][@<alpha>]', e.g. DM10+cos@10 -> ('DM10', 'cos', 10.0)."""
    rest, _, alpha = cell.partition("@")
    base, _, distance = rest.partition("+")
    if base not in BASES or (distance and distance not in PAPER_DISTANCE) or (alpha and not distance):
        raise ValueError(f"cell {cell!r}: expected <{'|'.join(BASES)}>[+<{'|'.join(PAPER_DISTANCE)}>][@<alpha>]")
    return base, distance or None, float(alpha) if alpha else default_alpha


DATASETS = {"Digits": "Digits", "CIFARDigits": "CIFAR10"}  # ours -> the --dataset both tools are given
DEFAULT_BUDGETS = "Digits:DC=200,DSA=20,DM=500;CIFARDigits:DC=50,DSA=2,DM=100"


def parse_budgets(text: str) -> dict[str, dict[str, int]]:
    budgets: dict[str, dict[str, int]] = {}
    for part in filter(None, text.split(";")):
        dataset, _, entries = part.partition(":")
        budgets[dataset] = {k: int(v) for k, v in (e.split("=") for e in entries.split(","))}
    return budgets


# ------------------------------------------------------------------------------------------------ preparing
def prepare(args) -> dict[str, dict]:
    """The data of each data set (ours' flags, the paper's data file) and its CLoM pool."""
    args.out.mkdir(parents=True, exist_ok=True)
    from dsa_fidelity import write_cifar_digits

    from utils.data import load_dataset

    prepared = {}
    for dataset in args.datasets.split(","):
        if dataset == "Digits":
            data = load_dataset("Digits")
            paper_data = save_tensors(args.out / "digits_tensors.pt", "Digits", data.train, data.test)
            ours, load = ["--dataset", "Digits"], ("Digits", None)
        else:
            paper_data = write_cifar_digits(args.out / "cifar_digits")
            ours, load = ["--dataset", "CIFAR10", "--data_path", str(paper_data)], ("CIFAR10", paper_data)
        name = DATASETS[dataset]
        pool = args.out / f"pretrained_model/{name}/original/ConvNet/index_{args.pool_size - 1}"
        if not (pool / f"{name}_ConvNet_original_epoch{args.pool_epochs}.pth").exists():
            run([sys.executable, str(ROOT / "train_original_models.py"), *ours, "--model", "ConvNet",
                 "--normalize_data", "--num", str(args.pool_size), "--epochs", str(args.pool_epochs),
                 "--save_every", str(args.pool_epochs), "--random_seed", "0", *eager(args)], args.out,
                args.out / f"pool_{dataset}.log", threads=os.cpu_count() or 1)
        prepared[dataset] = {"ours": ours, "load": load, "paper_data": paper_data, "name": name}
    return prepared


def eager(args) -> list[str]:
    """--eager for our scripts when asked: many short runs sharing one card would each spend longer compiling than
    running (the compiled and eager paths give the same sets within the tests' tolerances)."""
    return ["--eager"] if args.eager else []


def add_eager_flag(parser: argparse.ArgumentParser, scripts: str = "pool, distillations, validate.py") -> None:
    """The --eager flag that eager() reads, for each script that starts ours."""
    parser.add_argument("--eager", action="store_true", help=f"our scripts ({scripts}) without compiled paths")


def run(cmd: list[str], cwd: Path, log: Path, threads: int = 1) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONWARNINGS": "ignore"}
    start = time.time()
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(cmd) + "\n")
        handle.flush()
        code = subprocess.call(cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"failed ({code}): {' '.join(cmd)}; see {log}")
    return time.time() - start


# ------------------------------------------------------------------------------------------------ one run
def jobs(args) -> list[tuple[str, str, str, str]]:
    """(dataset, cell, tool, seed): every tool's run of every cell, then the random-real baselines."""
    out = []
    for dataset in args.datasets.split(","):
        for seed in args.seeds.split(","):
            for cell in args.cells.split(","):
                for tool in args.tools.split(","):
                    if tool == "paper" and parse_cell(cell, args.alpha)[1] == "ce":
                        continue  # the paper's code has no formula ce
                    out.append((dataset, cell, tool, seed))
            for ipc in sorted({BASES[parse_cell(c, args.alpha)[0]][2] for c in args.cells.split(",")}):
                if not args.no_random_real:
                    out.append((dataset, f"random{ipc}", "real", seed))
    return out


def distill(args, prepared: dict, dataset: str, cell: str, tool: str, seed: str) -> tuple[Path, float]:
    base, distance, alpha = parse_cell(cell, args.alpha)
    kind, script, _, flags = BASES[base]
    budget = parse_budgets(args.budgets)[dataset][kind]
    folder = args.out / f"{dataset}_{cell}_{tool}_seed{seed}"
    data, name = prepared[dataset], prepared[dataset]["name"]
    common = [*flags, "--num_eval", "0", "--save_path", str(folder)]
    if distance is not None:
        common += ["--CLoM", "--CLoM_distance", PAPER_DISTANCE[distance] if tool == "paper" else distance,
                   "--models_pool", "ConvNet", "--alphas", f"{alpha:g}", "--model_num", str(args.pool_size),
                   "--epoch", str(args.pool_epochs), "--source_dataset", name, "--CLoM_batch_size", "8196"]
    for extra in args.extra.split(";") if args.extra else []:
        common += extra.split()
    log = args.out / f"{folder.name}.log"
    shutil.rmtree(folder, ignore_errors=True)  # this benchmark's own folder: what a stopped earlier attempt left
    if tool == "paper":
        cmd = [sys.executable, str(ROOT / "benchmarks/paper_code.py"), "--paper-code", str(args.paper_code),
               "--data", str(data["paper_data"]), "--seed", seed, script, "--dataset", name,
               "--Iteration", str(budget - 1), *common]
    else:
        cmd = [sys.executable, str(ROOT / script), *data["ours"], "--Iteration", str(budget), "--random_seed", seed,
               *common, *eager(args)]
    seconds = run(cmd, args.out, log)
    return next(folder.rglob("res_*.pt")), seconds


def random_real_set(args, prepared: dict, dataset: str, ipc: int, seed: str) -> Path:
    """A random real subset with `ipc` images per class, drawn as validate.py --random_real draws its k-th
    subset (from --random_real_seed 0), saved as a set."""
    import torch

    from utils.data import load_dataset
    from utils.seeding import derive_seed, make_generator

    loaded = load_dataset(*prepared[dataset]["load"])
    idx = loaded.train.random_subset_indices([ipc] * loaded.spec.num_classes,
                                             make_generator(derive_seed(0, "random real", int(seed))))
    path = args.out / f"{dataset}_random{ipc}_real_seed{seed}/res_random_{ipc}ipc.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"data": [[loaded.train.images(idx), loaded.train.labels[idx]]], "accs_all_exps": {}}, path)
    return path


def evaluate(args, prepared: dict, dataset: str, synthetic_set: Path, name: str) -> list[float]:
    report = args.out / f"{name}.validate.json"
    if report.exists():
        report.unlink()  # a half-finished earlier attempt
    run([sys.executable, str(ROOT / "validate.py"), *prepared[dataset]["ours"], "--model", "ConvNet",
         "--normalize_data", "--dsa", "--epochs", str(args.eval_epochs), "--save_every", str(args.eval_epochs),
         "--lr_decay_step", str(args.eval_epochs // 2), "--num_eval", str(args.num_eval), "--random_seed", "0",
         "--synthesis_data_path", str(synthetic_set), "--result_json", str(report), *eager(args)], args.out,
        args.out / f"{name}.log")
    return json.loads(report.read_text())["final"]


def one_job(args, prepared: dict, job: tuple[str, str, str, str]) -> None:
    dataset, cell, tool, seed = job
    name = f"{dataset}_{cell}_{tool}_seed{seed}"
    record = args.out / f"{name}.json"
    if record.exists():
        return
    start = time.time()
    if tool == "real":
        synthetic_set, seconds = random_real_set(args, prepared, dataset, int(cell[len("random"):]), seed), 0.0
    else:
        synthetic_set, seconds = distill(args, prepared, dataset, cell, tool, seed)
    final = evaluate(args, prepared, dataset, synthetic_set, name)
    record.write_text(json.dumps({"dataset": dataset, "cell": cell, "tool": tool, "seed": seed, "final": final,
                                  "distill_s": round(seconds, 1), "set": str(synthetic_set),
                                  "budget": None if tool == "real" else
                                  parse_budgets(args.budgets)[dataset][BASES[parse_cell(cell, args.alpha)[0]][0]]}))
    print(f"{name}: {100 * np.mean(final):.2f} ± {100 * np.std(final):.2f}% (distil {seconds:.0f} s, all "
          f"{time.time() - start:.0f} s)", flush=True)


# ------------------------------------------------------------------------------------------------ the tables
def collect(folders: list[Path]) -> dict[tuple[str, str, str], list[dict]]:
    """(data set, cell, tool) -> the run records under `folders` (tool 'real': the random real subsets)."""
    by: dict[tuple[str, str, str], list[dict]] = {}
    for path in sorted(p for f in folders for p in f.glob("*_seed*.json") if not p.name.endswith(".validate.json")):
        record = json.loads(path.read_text())
        by.setdefault((record["dataset"], record["cell"], record["tool"]), []).append(record)
    return by


def label(cell: str, with_paper_name: bool = False) -> str:
    base, distance, alpha = parse_cell(cell, 1000.0)
    kind, _, ipc, _ = BASES[base]
    text = f"{kind} ipc {ipc}"
    if distance:
        paper = PAPER_DISTANCE[distance]
        text += f" + CLoM {distance}" + (f" (paper: {paper})" if with_paper_name and paper not in (None, distance)
                                         else "")
        text += f", α {alpha:g}"
    return text


def cell_stats(by, dataset: str, cell: str, tool: str) -> dict | None:
    """Per-seed mean accuracies (%), their IOR against the random real subsets of the cell's ipc, budgets and
    distillation times; None when the tool has no run of the cell."""
    runs = by.get((dataset, cell, tool), [])
    if not runs:
        return None
    ipc = BASES[parse_cell(cell, 0.0)[0]][2]
    real = [a for r in by.get((dataset, f"random{ipc}", "real"), []) for a in r["final"]]
    per_seed = [100 * np.mean(r["final"]) for r in runs]
    return {"acc": per_seed, "ior": [a - 100 * np.mean(real) for a in per_seed] if real else [],
            "budget": sorted({r["budget"] for r in runs}), "distill_s": [r["distill_s"] for r in runs]}


def mean_std(values: list[float], signed: bool = False) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):+.2f}" if signed else f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def cells_and_datasets(by) -> tuple[list[str], list[str]]:
    return (list(dict.fromkeys(k[1] for k in by if k[2] != "real")), list(dict.fromkeys(k[0] for k in by)))


def random_real_rows(by, dataset: str, cells: list[str], row) -> list[str]:
    """The random real subsets of each ipc as rows: row(accuracy text, subsets) gives the cells after the name."""
    rows = []
    for ipc in sorted({BASES[parse_cell(c, 0.0)[0]][2] for c in cells}):
        real = by.get((dataset, f"random{ipc}", "real"), [])
        if real:
            accuracy = mean_std([100 * np.mean(r["final"]) for r in real])
            rows.append(f"| {dataset} | random real, ipc {ipc} | " + " | ".join(row(accuracy, len(real))) + " |")
    return rows


def fidelity_table(by) -> str:
    """One row per (data set, cell): each tool's mean ± std over seeds of the per-seed mean accuracy and its
    IOR, then ours - paper."""
    lines = ["| data set | cell | budget (updates) | paper's code: acc. (%) | IOR | ours: acc. (%) | IOR | "
             "ours − paper | runs (paper/ours) |", "|---|---|---|---|---|---|---|---|---|"]
    cells, datasets = cells_and_datasets(by)
    for dataset in datasets:
        for cell in cells:
            paper, ours = cell_stats(by, dataset, cell, "paper"), cell_stats(by, dataset, cell, "ours")
            if paper is None and ours is None:
                continue
            stats = [paper or {"acc": [], "ior": [], "budget": []}, ours or {"acc": [], "ior": [], "budget": []}]
            diff = f"{np.mean(stats[1]['acc']) - np.mean(stats[0]['acc']):+.2f}" if paper and ours else "–"
            budget = "/".join(map(str, sorted({b for s in stats for b in s["budget"]})))
            runs = f"{len(stats[0]['acc'])}/{len(stats[1]['acc'])}"
            lines.append(f"| {dataset} | {label(cell, True)} | {budget} | {mean_std(stats[0]['acc'])} | "
                         f"{mean_std(stats[0]['ior'], True)} | {mean_std(stats[1]['acc'])} | "
                         f"{mean_std(stats[1]['ior'], True)} | {diff} | {runs} |")
        lines += random_real_rows(by, dataset, cells, lambda acc, n: ["–", acc, "", acc, "", "", f"{n}/{n}"])
    return "\n".join(lines)


def results_table(by, tool: str = "ours") -> str:
    """One tool's results: per (data set, cell) the accuracy, IOR and distillation time (mean over seeds)."""
    lines = ["| data set | set | budget (updates) | test acc. (%) | IOR (points) | distillation | seeds |",
             "|---|---|---|---|---|---|---|"]
    cells, datasets = cells_and_datasets(by)
    for dataset in datasets:
        for cell in cells:
            stats = cell_stats(by, dataset, cell, tool)
            if stats is not None:
                lines.append(f"| {dataset} | {label(cell)} | {'/'.join(map(str, stats['budget']))} | "
                             f"{mean_std(stats['acc'])} | {mean_std(stats['ior'], True)} | "
                             f"{np.mean(stats['distill_s']) / 60:.1f} min | {len(stats['acc'])} |")
        lines += random_real_rows(by, dataset, cells, lambda acc, n: ["–", acc, "", "", str(n)])
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the command
def get_args_parser(description: str = __doc__, tools: str = "paper,ours") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper-code", type=Path, help="a checkout of the paper's repository (its root)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--datasets", default="Digits", help="comma-separated, of Digits, CIFARDigits")
    parser.add_argument("--cells", default=FIDELITY_CELLS,
                        help="comma-separated <base>[+<distance>][@<alpha>]: bases " + ", ".join(BASES))
    parser.add_argument("--tools", default=tools, help="paper, ours or both")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS,
                        help="image updates per run: 'DATASET:DC=n,DSA=n,DM=n;...'")
    parser.add_argument("--extra", default="", help="more flags for both tools' distillations")
    parser.add_argument("--alpha", type=float, default=1000.0, help="CLoM's alpha (the paper's README: 1000)")
    parser.add_argument("--pool_size", type=int, default=2)
    parser.add_argument("--pool_epochs", type=int, default=30)
    parser.add_argument("--num_eval", type=int, default=5)
    parser.add_argument("--eval_epochs", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    add_eager_flag(parser)
    parser.add_argument("--no_random_real", action="store_true",
                        help="skip the random real subsets (e.g. another command into the same --out makes them)")
    parser.add_argument("--summarize", type=Path, nargs="+", help="print the table of these --out folders")
    return parser


def run_benchmark(args) -> dict:
    """Every run of `args` not done yet under args.out; returns the records (as collect)."""
    if "paper" in args.tools.split(","):
        if not args.paper_code or not is_paper_checkout(args.paper_code.expanduser().resolve()):
            sys.exit(f"{Path(sys.argv[0]).name}: --paper-code must be a checkout of the paper's code "
                     f"(got {args.paper_code})")
        args.paper_code = args.paper_code.expanduser().resolve()
    args.out = args.out.resolve()
    try:
        [parse_cell(c, args.alpha) for c in args.cells.split(",")]
    except ValueError as err:
        sys.exit(f"{Path(sys.argv[0]).name}: {err}")
    prepared = prepare(args)
    todo = jobs(args)
    print(f"{len(todo)} runs, {args.jobs} at a time; budgets {args.budgets}; evaluation {args.num_eval} ConvNets x "
          f"{args.eval_epochs} epochs with DSA", flush=True)
    failed = 0
    with ThreadPoolExecutor(args.jobs) as workers:
        for future in [workers.submit(one_job, args, prepared, job) for job in todo]:
            try:
                future.result()
            except RuntimeError as err:  # one run failed: say which, finish the others
                print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr, flush=True)
                failed += 1
    if failed:
        sys.exit(f"{Path(sys.argv[0]).name}: {failed} run(s) failed (above); the same command reruns only them")
    return collect([args.out])


def main() -> None:
    parser = get_args_parser()
    args = parser.parse_args()
    if args.summarize:
        print(fidelity_table(collect(args.summarize)))
        return
    if not args.out:
        parser.error("give --out (to run), or --summarize FOLDERS")
    print(fidelity_table(run_benchmark(args)))


if __name__ == "__main__":
    main()
