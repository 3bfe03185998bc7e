"""quickstart.py end to end with every step shortened (its commands run as subprocesses, two at a time), and
summarize.py on what it wrote."""

import quickstart
import summarize
from utils.cli import run_cli


def test_quickstart_runs_every_step_and_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "qs"
    rows = quickstart.main(["--out", str(out), "--pool_size", "1", "--pool_epochs", "1", "--iterations", "1",
                            "--num_eval", "1", "--eval_epochs", "1", "--gpu", "cpu", "--jobs", "2"])
    assert [name for name, _, _ in rows] == ["random real", "DC", "DC + CLoM (ce_plain)"]
    printed = capsys.readouterr().out
    assert "synthetic set" in printed and "IOR (points)" in printed and "s in all" in printed
    # each set's IOR is its accuracy minus the random real images', as printed beside it
    lines = {line[:22].strip(): line.split() for line in printed.splitlines() if line.startswith(("random", "DC"))}
    assert lines["random real"][-1] == "–"
    assert lines["DC + CLoM (ce_plain)"][-1] == f"{rows[2][1] - rows[0][1]:+.2f}"
    assert len(list((out / "logs").glob("*.txt"))) == 7  # pool, 3 distillations, 3 validations
    # The validate reports and the sets are what summarize.py tabulates.
    assert run_cli(summarize.main, [str(out), "--filter", "kind=validate"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 2 + 3 and all("validate.py 1 ep, DSA" in line for line in table[2:])
