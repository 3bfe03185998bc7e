"""Results on the bundled Digits set: this suite's DC, DSA and DM, alone and with CLoM, against random real
images under one evaluation (IOR), over several seeds.

    python benchmarks/digits_table.py --out runs/digits                  # the table of docs/results.md
    python benchmarks/digits_table.py --out runs/digits --cells DM10,DM10+cos@10,DM10+ce@10   # other cells
    python benchmarks/digits_table.py --summarize runs/digits

It is fidelity_paper.py with our tool only: the same cells, budgets, pool, evaluator (validate.py: 5 ConvNets x
300 epochs with DSA, the final epoch's accuracy) and random real subsets, so an --out shared with
fidelity_paper.py reuses its runs of our tool, and the two tables agree by construction. Each run's own
numbers are in <out>/<run>.json (from validate.py's report), and every run's log beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity_paper import collect, get_args_parser, results_table, run_benchmark  # noqa: E402


def main(argv=None) -> str:
    parser = get_args_parser(__doc__, tools="ours")
    parser.set_defaults(datasets="Digits")
    args = parser.parse_args(argv)
    if args.summarize:
        table = results_table(collect(args.summarize))
    elif not args.out:
        parser.error("give --out (to run), or --summarize FOLDERS")
    else:
        table = results_table(run_benchmark(args))
    print(table)
    return table


if __name__ == "__main__":
    main()
