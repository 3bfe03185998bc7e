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
    assert [name for name, _, _ in rows] == ["random real", "DM", "DM + CLoM (cos)"]
    printed = capsys.readouterr().out
    assert "synthetic set" in printed and "DM + CLoM (cos)" in printed and "s in all" in printed
    assert len(list((out / "logs").glob("*.txt"))) == 7  # pool, 3 distillations, 3 validations
    # The validate reports and the sets are what summarize.py tabulates.
    assert run_cli(summarize.main, [str(out), "--filter", "kind=validate"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 2 + 3 and all("validate.py 1 ep, DSA" in line for line in table[2:])
