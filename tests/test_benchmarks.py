"""The scripts behind the results and speed tables, end to end at tiny size: what they run, read and print.

The paper's side runs tests/fake_paper_code (its checkout's layout and entry points, none of its algorithms;
the real checkout is fetched by a user, never copied here), so the stand-ins, the flags passed, the result
files and the parsing of validate.py's reports are all exercised; a format change fails here, not at the end
of a long run.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import table_rows as markdown_rows

ROOT = Path(__file__).resolve().parents[1]
FAKE_PAPER = ROOT / "tests/fake_paper_code"


def run(*argv: str, cwd: Path, env: dict | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([*argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def table_rows(text: str) -> list[list[str]]:
    return markdown_rows(text, header=False)


TINY = ["--seeds", "0", "--budgets", "Digits:DC=1,DSA=1,DM=2", "--num_eval", "2", "--eval_epochs", "2",
        "--pool_size", "1", "--pool_epochs", "1", "--jobs", "2"]


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory):
    """fidelity_paper.py at tiny size: DC ipc 1 and DM ipc 10 + CLoM cos, both tools, one seed."""
    out = tmp_path_factory.mktemp("fidelity") / "runs"
    printed = run(sys.executable, str(ROOT / "benchmarks/fidelity_paper.py"), "--paper-code", str(FAKE_PAPER),
                  "--out", str(out), "--cells", "DC1,DM10+cos", "--eager", *TINY, cwd=out.parent)
    return out, printed


def test_fidelity_runs_both_tools_and_its_table_reads_validates_reports(fidelity):
    out, printed = fidelity
    records = {p.name: json.loads(p.read_text()) for p in out.glob("*_seed0.json")}
    assert sorted(records) == sorted(f"Digits_{c}_seed0.json" for c in
                                     ("DC1_paper", "DC1_ours", "DM10+cos_paper", "DM10+cos_ours", "random1_real",
                                      "random10_real"))
    for name, record in records.items():  # the accuracies are validate.py's, as it wrote them
        report = json.loads((out / name.replace(".json", ".validate.json")).read_text())
        assert record["final"] == report["final"] and len(report["final"]) == 2 and report["epochs"] == 2
    # the paper's run got its data through the stand-ins and --Iteration budget-1; ours --Iteration budget
    paper_set = records["Digits_DM10+cos_paper_seed0.json"]["set"]
    assert "CLoM/cos_distance/Digits->Digits/MP['ConvNet']_Nm[1]_Epoch[1]/alphas['ConvNet']->[1000.0]" in paper_set
    paper_command = (out / "Digits_DM10+cos_paper_seed0.log").read_text().splitlines()[0]
    ours_command = (out / "Digits_DM10+cos_ours_seed0.log").read_text().splitlines()[0]
    assert "paper_code.py" in paper_command and " --Iteration 1 " in paper_command
    assert "main_DM.py" in ours_command and " --Iteration 2 " in ours_command
    # --eager reaches our scripts (the distillation and validate.py, for both tools' sets), never the paper's
    assert " --eager" in ours_command and "--eager" not in paper_command
    validations = [line for line in (out / "Digits_DM10+cos_paper_seed0.log").read_text().splitlines()
                   if line.startswith("$ ") and "validate.py" in line]
    assert validations and all(" --eager" in line for line in validations)
    ours = json.loads(Path(records["Digits_DM10+cos_ours_seed0.json"]["set"]).with_name(
        "args_DM_Digits_ConvNet_10ipc.json").read_text())["args"]
    assert ours["Iteration"] == 2 and ours["CLoM_distance"] == "cos" and ours["alphas"] == [1000.0]
    rows = {row[1]: row for row in table_rows(printed)}
    dm = rows["DM ipc 10 + CLoM cos, α 1000"]
    mean = lambda name: 100 * np.mean(records[name]["final"])  # noqa: E731
    assert dm[3] == f"{mean('Digits_DM10+cos_paper_seed0.json'):.2f} ± 0.00"
    assert dm[5] == f"{mean('Digits_DM10+cos_ours_seed0.json'):.2f} ± 0.00"
    ior = mean("Digits_DM10+cos_ours_seed0.json") - mean("Digits_random10_real_seed0.json")
    assert dm[6] == f"{ior:+.2f}" and dm[8] == "1/1"
    assert rows["random real, ipc 1"][3] == f"{mean('Digits_random1_real_seed0.json'):.2f} ± 0.00"


def test_digits_table_is_the_fidelity_runs_of_our_tool(fidelity):
    out, printed = fidelity
    mine = run(sys.executable, str(ROOT / "benchmarks/digits_table.py"), "--summarize", str(out), cwd=out)
    rows = {row[1]: row for row in table_rows(mine)}
    both = {row[1]: row for row in table_rows(printed)}
    assert set(rows) == {"DC ipc 1", "DM ipc 10 + CLoM cos, α 1000", "random real, ipc 1", "random real, ipc 10"}
    assert rows["DC ipc 1"][3] == both["DC ipc 1"][5] and rows["DC ipc 1"][4] == both["DC ipc 1"][6]
    # a second run into the same folder finds every run done and starts none
    again = run(sys.executable, str(ROOT / "benchmarks/digits_table.py"), "--out", str(out), "--cells", "DC1",
                *TINY, cwd=out)
    assert "Digits_DC1_ours_seed0:" not in again and table_rows(again)[0][3] == rows["DC ipc 1"][3]
    # a run stopped after its distillation (its set saved, no record) is redone by the same command, not refused
    record = out / "Digits_DC1_ours_seed0.json"
    kept = json.loads(record.read_text())
    record.unlink()
    redone = run(sys.executable, str(ROOT / "benchmarks/digits_table.py"), "--out", str(out), "--cells", "DC1",
                 *TINY, cwd=out)
    assert "Digits_DC1_ours_seed0:" in redone and json.loads(record.read_text())["final"] == kept["final"]


def test_bench_paper_times_both_tools(tmp_path):
    printed = run(sys.executable, str(ROOT / "benchmarks/bench_paper.py"), "--paper-code", str(FAKE_PAPER),
                  "--cases", "DM10", "--iterations", "3", "--warmup", "1", "--length", "4", "--extra",
                  "--batch_real 8", "--work", str(tmp_path / "work"), cwd=tmp_path)
    [line] = [line for line in printed.splitlines() if line.startswith("DM10")]
    paper, ours, ratio = re.match(r"DM10\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)x", line).groups()
    # seconds per iteration with 4 decimals, paper/ours with 2 (the stand-in's iterations take microseconds)
    assert float(ours) > 0 and abs(float(ratio) - float(paper) / float(ours)) <= 0.01 + 0.02 * float(ratio)


def test_sweep_script_ends_with_summarizes_table(tmp_path):
    env = {"SEEDS": "0", "ITERATIONS": "1", "BATCH_REAL": "4", "NUM_EVAL": "1", "EVAL_EPOCHS": "1", "POOL_EPOCHS": "1"}
    # --jobs per device, here two "devices" (the CPU twice): two slots, each run on the device of its slot
    printed = run("bash", str(ROOT / "scripts/sweep_digits.sh"), "--jobs", "1", "--gpu", "cpu cpu",
                  str(tmp_path / "sweep"), cwd=tmp_path, env=env)
    rows = table_rows(printed)
    assert len(rows) == 6 and {row[4] for row in rows} == {"none", "ce", "cos"}  # ipc 1 and 10, three CLoMs
    assert {row[5] for row in rows if row[4] != "none"} == {"ConvNet ×2, ep 1"}  # the pool of POOL_EPOCHS epochs
    done = [line for line in printed.splitlines() if line.strip().startswith("done DM_") and " on cpu " in line]
    assert len(done) == 6


def test_init_swap_starts_both_tools_from_one_runs_images(fidelity):
    out, _ = fidelity  # its pool and data
    printed = run(sys.executable, str(ROOT / "benchmarks/init_swap.py"), "--paper-code", str(FAKE_PAPER), "--out",
                  str(out), "--start_seeds", "0", "--draw_seeds", "0,1", "--repeats", "1", "--budgets", "Digits:DC=1",
                  "--num_eval", "1", "--eval_epochs", "1", "--pool_size", "1", "--pool_epochs", "1", cwd=out)
    records = {p.name: json.loads(p.read_text()) for p in out.glob("start0_*.json")
               if not p.name.endswith(".validate.json")}
    assert sorted(records) == ["start0_ours_seed0.json", "start0_ours_seed1.json", "start0_paper_repeat0.json"]
    start = out / "start_seed0/original_method"  # our run of seed 0 stopped before its first update
    assert "--start" in (out / "start0_paper_repeat0.log").read_text().splitlines()[0]
    assert "--child-start" in (out / "start0_ours_seed1.log").read_text().splitlines()[0] and start.exists()
    row, mean = table_rows(printed)
    ours = [f"{s}: {100 * np.mean(records[f'start0_ours_seed{s}.json']['final']):.2f}" for s in (0, 1)]
    paper = f"{100 * np.mean(records['start0_paper_repeat0.json']['final']):.2f}"
    assert row == ["our seed 0", ", ".join(ours), paper]
    # paired by start: the mean of our two runs from start 0 against the paper code's repeat from it
    ours_mean = np.mean([100 * np.mean(records[f"start0_ours_seed{s}.json"]["final"]) for s in (0, 1)])
    assert mean == ["mean over the starts", f"{ours_mean:.2f} ± 0.00", f"{paper} ± 0.00"]


def test_fidelity_mtt_runs_our_cells_and_its_table_reads_validates_reports(tmp_path):
    """fidelity_mtt.py at tiny size, our tool's cells (MTT's code is fetched by a user, never copied here): the
    buffer, the distillations with and without CLoM, validate.py with the learned lr and IOR, the table."""
    out = tmp_path / "fidelity_mtt"
    tiny = ["--out", str(out), "--ipcs", "1", "--cells", "ours", "ours+cos", "--seeds", "0", "--experts", "2",
            "--expert_train_epochs", "2", "--iterations", "2", "--syn_steps", "2", "--expert_epochs", "1",
            "--max_start_epoch", "1", "--eval_epochs", "2", "--num_eval", "1", "--eager"]
    printed = run(sys.executable, str(ROOT / "benchmarks/fidelity_mtt.py"), *tiny, cwd=tmp_path)
    rows = {row[2]: row for row in table_rows(printed)}
    assert set(rows) == {"ours", "ours+cos"}
    for cell, row in rows.items():
        report = json.loads(next((out / f"Digits_MTT1_{cell}_seed0").glob("validate_*.json")).read_text())
        assert row[3] == "1" and row[4] == f"{100 * np.mean(report['final']):.2f} ± 0.00"
        assert row[5].startswith(("+", "-")) and float(row[6]) > 0  # IOR and the learned lr were read
    again = run(sys.executable, str(ROOT / "benchmarks/fidelity_mtt.py"), *tiny, cwd=tmp_path)
    lines = [line for log in out.rglob("*.log") for line in log.read_text().splitlines()]
    commands = [line for line in lines if " command: " in line]  # buffer.py's and validate.py's
    assert {"buffer.py", "validate.py"} <= {Path(c.split()[3]).name for c in commands}
    assert all(" --eager" in c for c in commands)  # --eager reached each of our scripts
    settings = [line for line in lines if "MttConfig(" in line]  # distill.py's
    assert settings and all("eager=True" in line for line in settings)
    assert "Digits_MTT1_ours_seed0: done before" in again
    assert table_rows(run(sys.executable, str(ROOT / "benchmarks/fidelity_mtt.py"), "--summarize", str(out),
                          cwd=tmp_path)) == table_rows(printed)


def test_bench_mtt_times_our_tool_and_its_table_reads_the_timings(tmp_path):
    """bench_mtt.py at tiny size with our tool only (MTT's code is fetched by a user): the buffer, the timed
    iterations read back from the run, peak memory, and the table."""
    out = tmp_path / "bench_mtt"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dsa_fidelity import write_cifar_digits

    # a smaller copy written first (the benchmark keeps a copy it finds): the same format, 500 training images
    write_cifar_digits(out / "cifar_digits" / "cifar-10-batches-py", train_size=500, test_size=100)
    printed = run(sys.executable, str(ROOT / "benchmarks/bench_mtt.py"), "--out", str(out), "--syn_steps", "2",
                  "--iterations", "1", "--tools", "ours", "--buffer_experts", "1", "--buffer_epochs", "2",
                  "--ipc", "1", cwd=tmp_path)
    measured = json.loads((out / "bench_mtt.json").read_text())["ours_steps2"]
    assert measured["exit_status"] == 0 and not measured["capped"] and measured["peak_rss_gb"] > 0
    assert measured["s_per_iteration"] > 0 and measured["cpu_s_per_iteration"] > 0
    (row,) = table_rows(printed)
    assert row[:2] == ["2", "ours"] and row[3] == f"{measured['cpu_s_per_iteration']:.3g}"
