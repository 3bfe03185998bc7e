"""One table of every result under some folders: a sweep's numbers without reading logs.

    python summarize.py condensed/ [more folders or files] [--format md|csv|json] [--sort KEY ...]
                        [--filter KEY=VALUE ...]

Reads every distillation result file (res_*.pt: ours, or the paper code's, whose folders carry the
settings) and every validate.py report (validate_*.json) and prints one row per setting: data set,
method, ipc, model, CLoM (distance, pool, source, α), where the accuracies come from (the run's own final
evaluation, or validate.py), how many runs (files; seeds collapse into one row), experiments × evaluation
networks, the test accuracy (mean ± std over every network of every experiment, in %) per evaluation
model, IOR and HLR where validate.py measured them (--random_real, --full_data; in points), and the mean
wall time of one run. Files that cannot be read are skipped with a one-line warning.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

import numpy as np

from utils.cli import HelpFormatter, run_cli
from utils.results import COLUMNS, GAPS, Row, evaluation_models, summarize

FORMATS = ("md", "csv", "json")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=HelpFormatter)
    parser.add_argument("paths", nargs="*", default=["condensed"], metavar="PATH",
                        help="folders searched (recursively) for res_*.pt and validate_*.json, or such files")
    parser.add_argument("--format", default="md", metavar="|".join(FORMATS),
                        help="md: a Markdown table; csv: one line per row, mean/std/n per evaluation model; "
                        "json: every row with its seeds, files and settings")
    parser.add_argument("--sort", default="", metavar="KEY[,KEY...]",
                        help="sort by these keys, the first deciding first; '-KEY' sorts descending (write "
                        "--sort=-KEY). A key is a column "
                        f"({', '.join(name for name, _ in COLUMNS)}), an evaluation model (its mean accuracy: "
                        "--sort=-ConvNet), wall_time, runs, or a setting (iterations, lr_img, ...). "
                        "Default: by the columns, left to right")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep only results with KEY equal to VALUE (repeatable; all must hold): a column "
                        "(method=DM, ipc=10, clom=cos or clom=none, source=CIFAR100, evaluation=in run), "
                        "kind=run|validate, seed=0, or a setting as recorded (iterations=200, lr_img=1, "
                        "clom.alphas=1000, validate.epochs=300); case-insensitive, numbers compare as numbers")
    return parser


def main(argv=None) -> list[Row]:
    args = get_args_parser().parse_args(argv)
    if args.format not in FORMATS:
        from utils.errors import UserError

        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {args.format!r}")
    sort = [key.strip() for key in args.sort.split(",") if key.strip()]
    rows = summarize(args.paths, args.filter, sort, warn=lambda line: print(f"warning: {line}",
                                                                                 file=sys.stderr))
    if not rows:
        print("no results match the filters", file=sys.stderr)
        return rows
    print({"md": markdown, "csv": to_csv, "json": to_json}[args.format](rows), end="")
    return rows


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if values else "–"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def counts(row: Row) -> str:
    """'experiments × networks', e.g. '2 × 5' (a range of networks when runs differ)."""
    nets = row.networks()
    shown = "0" if not nets else str(nets[0]) if len(nets) == 1 else f"{nets[0]}–{nets[-1]}"
    return f"{row.experiments()} × {shown}"


def visible_columns(rows: list[Row]) -> list[tuple[str, str]]:
    """The columns, less CLoM's when no row uses CLoM and 'other settings' when it is empty everywhere."""
    hidden = set()
    if all(row.columns["clom"] == "none" for row in rows):
        hidden |= {"pool", "source", "alpha"}
    if not any(row.columns["settings"] for row in rows):
        hidden.add("settings")
    return [(name, header) for name, header in COLUMNS if name not in hidden]


def visible_gaps(rows: list[Row]) -> list[str]:
    """IOR / HLR, where some row has them."""
    return [name for name in GAPS if any(row.gaps(name) for row in rows)]


def signed_mean_std(values: list[float]) -> str:
    return f"{np.mean(values):+.2f} ± {np.std(values):.2f}" if values else "–"


def markdown(rows: list[Row]) -> str:
    columns, models, gaps = visible_columns(rows), evaluation_models(rows), visible_gaps(rows)
    header = ([h for _, h in columns] + ["runs", "exps × nets"] + [f"{m} acc. (%)" for m in models]
              + [GAPS[g] for g in gaps] + ["wall time"])
    lines = [header, ["---"] * len(header)]
    for row in rows:
        lines.append([row.columns[name] or "–" for name, _ in columns] + [str(len(row.records)), counts(row)]
                     + [mean_std(row.accuracies(m)) for m in models] + [signed_mean_std(row.gaps(g)) for g in gaps]
                     + [duration(row.wall_time_s())])
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def to_csv(rows: list[Row]) -> str:
    columns, models, gaps = [name for name, _ in COLUMNS], evaluation_models(rows), visible_gaps(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*columns, "runs", "experiments", "networks",
                     *[f"{m} {stat}" for m in [*models, *gaps] for stat in ("mean", "std", "n")], "wall_time_s"])
    for row in rows:
        stats = []
        for values in [*(row.accuracies(m) for m in models), *(row.gaps(g) for g in gaps)]:
            stats += [f"{np.mean(values):.4f}", f"{np.std(values):.4f}", len(values)] if values else ["", "", 0]
        wall = row.wall_time_s()
        writer.writerow([row.columns[name].replace("–", "") for name in columns] + [len(row.records),
                         row.experiments(),
                        " ".join(map(str, row.networks()))] + stats + ["" if wall is None else f"{wall:.2f}"])
    return buffer.getvalue()


def to_json(rows: list[Row]) -> str:
    out = []
    for row in rows:
        accuracy = {}
        for model in row.models():
            accs = row.accuracies(model)
            accuracy[model] = {"mean": float(np.mean(accs)) if accs else None,
                               "std": float(np.std(accs)) if accs else None, "n": len(accs), "values": accs}
        for name in GAPS:
            values = row.gaps(name)
            if values:
                accuracy[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values),
                                  "values": values}
        columns = {name: "" if row.columns[name] == "–" else row.columns[name] for name, _ in COLUMNS}
        columns["other_settings"] = columns.pop("settings")
        out.append({**columns, "kind": row.kind, "runs": len(row.records), "experiments": row.experiments(),
                    "networks": row.networks(), "accuracy": accuracy, "wall_time_s": row.wall_time_s(),
                    "seeds": row.seeds(), "files": [r.path for r in row.records],
                    "settings": row.shared_settings()})
    return json.dumps(out, indent=2, default=str, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.exit(run_cli(main))
