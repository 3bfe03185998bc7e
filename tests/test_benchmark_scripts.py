"""The speed and counting scripts behind docs/benchmarks.md and docs/results.md, end to end at tiny size.

Each script runs as a user runs it (`python benchmarks/<script>.py ...`, one thread, from a scratch folder) with
the flags that shrink it, and what it printed is read back: the tables parse, every ratio printed is the ratio
of the times printed (to the precision printed), counts are positive and add up, and where two paths must agree
(kornia's ops against ours, the loop against the default path, two distillations of one checkout) the
agreement is what is printed. The scripts that need CUDA end with one error line without it. A change of a
script's output or of an API it calls fails here, not at the end of a long measurement.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import table_rows

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run(script: str, *argv: str, cwd: Path, env: dict | None = None, status: int = 0) -> tuple[str, str]:
    """(stdout, stderr) of `python benchmarks/<script> argv...` run from `cwd`, after checking its exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, str(BENCH / script), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == status, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def bounds(printed: str) -> tuple[float, float]:
    """The interval of values that print as `printed` (rounded to its decimals)."""
    number = re.fullmatch(r"[-+]?\d+(?:\.(\d+))?", printed.strip())
    assert number, f"not a number: {printed!r}"
    half = 0.5 * 10.0 ** -len(number.group(1) or "")
    return float(printed) - half, float(printed) + half


def assert_ratio(numerator: str, denominator: str, ratio: str) -> None:
    """`ratio` is numerator / denominator for some values that print as the two."""
    (n_lo, n_hi), (d_lo, d_hi), (r_lo, r_hi) = bounds(numerator), bounds(denominator), bounds(ratio)
    assert d_hi > 0 and n_hi > 0, (numerator, denominator)
    lowest, highest = n_lo / d_hi, (n_hi / d_lo if d_lo > 0 else float("inf"))
    assert lowest <= r_hi and r_lo <= highest, f"{ratio} is not {numerator} / {denominator}"


def strip_unit(cell: str, unit: str) -> str:
    assert cell.endswith(unit), (cell, unit)
    return cell[: -len(unit)].strip()


# ---------------------------------------------------------------------------------------------- timing scripts
def test_bench_distill_times_three_paths_and_the_loop_agrees_with_the_default(tmp_path):
    out, _ = run("bench_distill.py", "--device", "cpu", "--cases", "DC1,DSA10,DM10", "--batch_real", "2",
                 "--repeats", "1", "--warmup", "0", "--length", "1", "--model", "ConvNetW32", cwd=tmp_path)
    assert "default path as in a run of 1 iterations" in out.splitlines()[0]
    header, *rows = table_rows(out)
    assert header == ["meth", "ipc", "dev", "real", "loop s", "batched s", "default s", "loop/bat", "loop/def",
                      "rel.diff"]
    assert [row[:4] for row in rows] == [["DC", "1", "cpu", "2"], ["DSA", "10", "cpu", "2"], ["DM", "10", "cpu", "2"]]
    for method, _, _, _, loop, batched, default, loop_bat, loop_def, diff in rows:
        assert min(map(float, (loop, batched, default))) > 0
        assert_ratio(loop, batched, strip_unit(loop_bat, "x"))
        assert_ratio(loop, default, strip_unit(loop_def, "x"))
        # the loop and our default path compute one loss (DSA's paths draw different augmentations)
        assert (diff == "-") if method == "DSA" else (float(diff) <= 1e-5), (method, diff)


def test_bench_host_memory_times_malloc_defaults_against_kept_memory(tmp_path):
    out, _ = run("bench_host_memory.py", "--cases", "DM10", "--length", "2", "--iterations", "1", "--warmup", "0",
                 "--work", str(tmp_path / "work"), cwd=tmp_path)
    header, *rows = table_rows(out)
    assert header[:2] == ["case", "malloc"] and header[-1] == "default / kept CPU time"
    assert [row[:2] for row in rows] == [["DM10", "default"], ["DM10", "kept"]]
    (_, _, _, cpu_default, _, faults_default, _, none), (_, _, _, cpu_kept, _, faults_kept, _, ratio) = rows
    assert none == "–" and float(cpu_default) > 0 and float(cpu_kept) > 0
    assert_ratio(cpu_default, cpu_kept, ratio)
    # the mechanism itself: DM's activations, freed every step, are faulted in again only with malloc's defaults
    assert float(faults_kept) < float(faults_default) / 5


def test_bench_eval_times_each_path_against_one_by_one(tmp_path):
    out, _ = run("bench_eval.py", "--device", "cpu", "--nets", "2", "--epochs", "1", "--ipc", "1", "--test_images",
                 "10", cwd=tmp_path)
    assert "2 ConvNets x 1 epochs with DSA on 10 images 3x32x32, tested on 10" in out
    rows = table_rows(out)
    assert [row[0] for row in rows] == ["one by one", "stacked", "default"]
    base = strip_unit(rows[0][1], "s")
    assert strip_unit(rows[0][2], "x") == "1.00"
    for _, seconds, ratio in rows:
        assert_ratio(base, strip_unit(seconds, "s"), strip_unit(ratio, "x"))


def test_bench_dsa_times_the_three_ways_of_a_siamese_call(tmp_path):
    out, _ = run("bench_dsa.py", "--classes", "2", "--ipc", "1", "--batch_real", "2", "--shape", "1,8,8",
                 "--repeats", "1", cwd=tmp_path)
    assert "real 2 x 2 | syn 2 x 1 | image (1, 8, 8) | median of 1" in out
    previous = re.search(r"one op per call \(previous\)\s+([0-9.]+) ms", out).group(1)
    ours, vs_previous = re.search(r"one op per class \(ours\)\s+([0-9.]+) ms\s+([0-9.]+)x the previous", out).groups()
    loop, faster = re.search(r"paper loop, 2C calls\s+([0-9.]+) ms\s+ours is ([0-9.]+)x faster", out).groups()
    assert_ratio(ours, previous, vs_previous)
    assert_ratio(loop, ours, faster)


def test_bench_train_pool_times_stacked_against_one_by_one(tmp_path):
    out, _ = run("bench_train_pool.py", "--device", "cpu", "--num", "2", "--images", "16", "--batch_size", "8",
                 "--model", "ConvNetW32", cwd=tmp_path)
    assert "2× ConvNetW32 | 16 images of 3×32×32, batch 8" in out
    alone = re.search(r"one by one :\s+([0-9.]+) s/epoch", out).group(1)
    stacked = re.search(r"ensemble   :\s+([0-9.]+) s/epoch", out).group(1)
    assert_ratio(alone, stacked, re.search(r"speed-up   :\s+([0-9.]+)×", out).group(1))


def test_bench_clom_times_ours_and_the_direct_formula(tmp_path):
    out, _ = run("bench_clom.py", "--device", "cpu", "--real", "64", "--sizes", "32,64", "--steps", "1",
                 "--syn_images", "10", cwd=tmp_path)
    assert "real 64 x 3x32x32 | |S| 10" in out
    table = re.findall(r"^(cos|ce)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)x\s+([0-9.]+)$", out, re.M)
    assert [(distance, int(size)) for distance, size, *_ in table] == [("cos", 32), ("cos", 64), ("ce", 32),
                                                                        ("ce", 64)]
    ours = {}
    for distance, size, ours_ms, direct_ms, ratio, setup in table:
        assert_ratio(direct_ms, ours_ms, ratio)
        ours[distance, int(size)] = ours_ms
        # each case's progress line printed the same times
        line = re.search(rf"^  {distance}\s+B=\s*{size}: ours\s+([0-9.]+) ms \(setup\s+([0-9.]+) s\) \| "
                         r"direct\s+([0-9.]+) ms", out, re.M)
        assert line.groups() == (ours_ms, setup, direct_ms)
    for distance in ("cos", "ce"):  # the growth of ours from the smallest to the largest batch, and its verdict
        growth, verdict = re.search(rf"^{distance}: ours 32 -> 64: x([0-9.]+) \((within|NOT within) 2x\)$", out,
                                    re.M).groups()
        assert_ratio(ours[distance, 64], ours[distance, 32], growth)
        assert (verdict == "within") == (float(growth) <= 2)


def test_bench_kornia_reports_equal_ops_and_times_them(tmp_path):
    out, _ = run("bench_kornia.py", "--shape", "1,8,8", "--classes", "2", "--real", "2", "--ipc", "1", "--repeats",
                 "1", cwd=tmp_path)
    assert "6 images of (1, 8, 8), forward + backward, median of 1" in out
    rows = table_rows(out)
    ops = {row[0]: row for row in rows if row[0].startswith(("DSA ", "DC "))}
    assert list(ops) == ["DSA color", "DSA crop", "DSA cutout", "DSA flip", "DSA scale", "DSA rotate", "DC crop",
                         "DC scale", "DC rotate", "DC noise"]
    for name, (_, diffs, ours, functional, module, speed_up) in ops.items():
        if name in ("DSA color", "DC noise"):  # kornia has nothing that computes them
            assert (diffs, functional, module, speed_up) == ("n/a", "–", "–", "–")
            continue
        # every other op is kornia's within 1e-4 (functional and, where kornia has one, the module), so timed
        assert all(float(diff) <= 1e-4 for diff in diffs.split(" / ")), (name, diffs)
        assert len(diffs.split(" / ")) == (2 if name in ("DSA crop", "DSA flip", "DSA scale", "DSA rotate") else 1)
        timed = [strip_unit(cell, "ms") for cell in (functional, module) if cell != "–"]
        assert len(timed) == len(diffs.split(" / "))
        best = min(timed, key=float)
        assert_ratio(strip_unit(ours, "ms"), best, strip_unit(speed_up, "×"))
    mappings = {row[0]: row[1:] for row in rows if "->" in row[0]}
    assert list(mappings) == ["3x32x32 -> 1x28x28", "3x64x64 -> 3x32x32", "3x224x224 -> 3x32x32",
                              "3x32x32 -> 3x224x224"]
    assert all(float(strip_unit(cell, "ms")) > 0 for cells in mappings.values() for cell in cells)


def test_bench_distributed_times_one_rank_against_two(tmp_path):
    out, _ = run("bench_distributed.py", "--only", "DM", "--iterations", "1", "--num_eval", "0", "--threads", "1",
                 cwd=tmp_path)
    header, row = out.strip().splitlines()
    assert header.split() == ["job", "1", "rank", "2", "ranks", "speed-up"]
    one, many, speed_up = re.fullmatch(r"DM distillation \(ipc 10\)\s+([0-9.]+)s\s+([0-9.]+)s\s+([0-9.]+)×",
                                       row).groups()
    assert_ratio(one, many, speed_up)


# ---------------------------------------------------------------------------------------------- counting scripts
def test_count_ops_counts_add_up_to_an_iteration(tmp_path):
    out, _ = run("count_ops.py", "--ipc", "2", "--batch_real", "1", "--model", "ConvNetD1", cwd=tmp_path)
    outer, inner_times, inner, inner_step = map(int, re.search(
        r"DC ipc 2: (\d+) outer steps \+ (\d+) x (\d+) inner steps; ConvNetD1 .* one inner step: (\d+)$", out,
        re.M).groups())
    assert (outer, inner_times, inner) == (2, 1, 6) and inner_step > 0  # get_loops(2)
    rows = {row[0]: row for row in table_rows(out)}
    assert list(rows) == ["paper loop", "ours, class-batched", "+ CUDA-graph inner step", "ours, one class at a time"]
    counts = {name: (int(strip_outer(row[1])), int(row[2].removeprefix("iteration"))) for name, row in rows.items()}
    for name, (per_step, iteration) in counts.items():
        assert per_step > 0
        if name == "+ CUDA-graph inner step":  # each inner step one replay
            assert iteration == outer * per_step + (outer - 1) * inner
        else:
            assert iteration == outer * per_step + (outer - 1) * inner * inner_step
    assert counts["+ CUDA-graph inner step"][0] == counts["ours, class-batched"][0]
    assert counts["ours, class-batched"][0] < counts["ours, one class at a time"][0] < counts["paper loop"][0]


def strip_outer(cell: str) -> str:
    return cell.removeprefix("outer step").strip()


def test_fusion_bytes_counts_one_step_eager_and_fused(tmp_path):
    """The smallest step there is (an MLP's inner SGD step on 2 images): inductor compiles it once, which takes
    most of this test's time (about 9 s of CPU with a warm inductor cache, 16 s cold); the ConvNet steps of the
    table compile for minutes and are not run here."""
    out, err = run("fusion_bytes.py", "--model", "MLP", "--steps", "inner", "--syn_images", "2", cwd=tmp_path)
    header, row = table_rows(out)
    assert header == ["step", "GFLOP", "eager aten ops", "eager MB moved", "fused kernels", "fused MB moved",
                      "bytes saved"]
    name, gflop, ops, eager_mb, kernels, fused_mb, saved = row
    assert name == "inner SGD step, 2 images" and float(gflop) >= 0
    assert int(ops) > int(kernels) > 0 and float(fused_mb) > 0
    assert_ratio(eager_mb, fused_mb, strip_unit(saved, "x"))
    assert "Graph Metrics" not in err  # inductor's per-node dump stays off the screen


# ---------------------------------------------------------------------------------------------- accuracy and sets
@pytest.fixture(scope="module")
def dsa_fidelity_run(tmp_path_factory):
    """dsa_fidelity.py at tiny size into a relative --out: DM on Digits, one seed, one network x 2 epochs."""
    folder = tmp_path_factory.mktemp("dsa_fidelity")
    out, _ = run("dsa_fidelity.py", "--out", "runs", "--datasets", "Digits", "--methods", "DM", "--seeds", "0",
                 "--dm_iterations", "1", "--num_eval", "1", "--eval_epochs", "2", "--gpu", "cpu", cwd=folder)
    return folder, out


def test_dsa_fidelity_distils_and_validates_each_seed(dsa_fidelity_run):
    folder, out = dsa_fidelity_run
    runs = folder / "runs"
    report = json.loads((runs / "Digits_DM_seed0.json").read_text())
    validated = json.loads((runs / "Digits_DM_seed0.validate.json").read_text())
    assert report["final"] == validated["final"] and len(validated["final"]) == 1 and validated["epochs"] == 2
    [synthetic_set] = (runs / "Digits_DM_seed0").rglob("res_DM_Digits_ConvNet_10ipc.pt")  # not nested in runs/runs
    args = json.loads(synthetic_set.with_name("args_DM_Digits_ConvNet_10ipc.json").read_text())["args"]
    assert args["Iteration"] == 1 and args["init"] == "real" and args["random_seed"] == 0
    final = 100 * np.array(report["final"])
    line, seconds = re.fullmatch(r"(.*) \((\d+) s\)", out.strip()).groups()
    assert line == f"Digits_DM_seed0: {final.mean():.2f} ± {final.std():.2f}%"
    assert abs(int(seconds) - report["distill_s"]) <= 1


def test_dsa_fidelity_summarize_is_the_mean_over_seeds(dsa_fidelity_run, tmp_path):
    folder, _ = dsa_fidelity_run
    after = tmp_path / "after"  # a second folder: the run's seed and a made-up second one
    after.mkdir()
    shutil.copy(folder / "runs/Digits_DM_seed0.json", after)
    (after / "Digits_DM_seed1.json").write_text(json.dumps({"name": "Digits_DM_seed1", "final": [0.5, 0.7]}))
    out, _ = run("dsa_fidelity.py", "--summarize", str(folder / "runs"), str(after), cwd=tmp_path)
    header, row = table_rows(out)
    assert header == ["data set", "method", "runs", "after"]
    seed0 = 100 * np.mean(json.loads((after / "Digits_DM_seed0.json").read_text())["final"])
    seeds = np.array([seed0, 60.0])
    assert row == ["Digits", "DM", f"{seed0:.2f} ± 0.00 (n=1)", f"{seeds.mean():.2f} ± {seeds.std():.2f} (n=2)"]


def importable_root() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def test_dsa_fidelity_writes_cifar_digits_our_loader_reads(tmp_path):
    importable_root()
    from benchmarks.dsa_fidelity import write_cifar_digits
    from utils.data import load_dataset

    write_cifar_digits(tmp_path / "cifar_digits", train_size=50, test_size=20)
    data = load_dataset("CIFAR10", tmp_path / "cifar_digits", normalize=False, download=False)
    assert tuple(data.train.images().shape) == (50, 3, 32, 32) and len(data.test.labels) == 20
    images = data.train.images()
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert bool((images[:, 0] == images[:, 1]).all())  # grey copied to RGB


@pytest.fixture(scope="module")
def same_sets_runs(tmp_path_factory):
    """Two runs of same_sets.py on this checkout (DM), the second comparing them."""
    folder = tmp_path_factory.mktemp("same_sets")
    run("same_sets.py", "--cases", "DM", "--out", "a", cwd=folder)
    out, _ = run("same_sets.py", "--cases", "DM", "--out", "b", "--compare", "a", "b", cwd=folder)
    return folder, out


def test_same_sets_finds_two_runs_of_one_checkout_equal(same_sets_runs):
    _, out = same_sets_runs
    assert re.findall(r"^(DM\S*)\s+(torch\.equal|DIFFERENT)$", out, re.M) == [("DM", "torch.equal")]


def test_same_sets_reports_a_changed_set(same_sets_runs, capsys):
    import torch

    importable_root()
    from benchmarks.same_sets import compare, result_files

    folder, _ = same_sets_runs
    shutil.copytree(folder / "b", folder / "c")
    path = result_files(folder / "c", ["DM"])["DM"]
    result = torch.load(path, weights_only=True)
    result["data"][0][0][0, 0, 0, 0] += 1e-3
    torch.save(result, path)
    capsys.readouterr()
    assert compare(folder / "a", folder / "c", ["DM"]) is False
    assert capsys.readouterr().out.split() == ["DM", "DIFFERENT"]


# ---------------------------------------------------------------------------------------------- CUDA only
@pytest.mark.parametrize("script", ["bench_dm_modes.py", "profile_matching.py", "check_fast_cuda.py"])
def test_cuda_only_scripts_end_with_one_line_without_cuda(script, tmp_path):
    out, err = run(script, cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""}, status=2)
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and "needs CUDA" in err
