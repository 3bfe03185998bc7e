"""Expert buffers are interchangeable with MTT's code, both ways: each tool's buffer.py writes a small buffer (Digits,
2 experts x 3 epochs), and the OTHER tool's distill.py distils 3 iterations from it.

    python benchmarks/mtt_interop.py --mtt-code <mtt-distillation checkout> --out runs/mtt_interop

MTT's scripts run through mtt_code.py's stand-ins (the Digits tensors, wandb, CPU .cpu()/.cuda()). Prints one line
per direction and exits non-zero when a direction fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

BUFFER = ["--dataset=Digits", "--model=ConvNet", "--num_experts=2", "--train_epochs=3", "--batch_train=64",
          "--save_interval=2"]  # MTT's buffer.py saves only full files of save_interval experts
DISTILL = ["--dataset=Digits", "--model=ConvNet", "--ipc=1", "--syn_steps=5", "--expert_epochs=2",
           "--max_start_epoch=2", "--Iteration=3", "--num_eval=0", "--eval_it=10"]


def run(command: list[str], log: Path) -> bool:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log.parent).returncode == 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtt-code", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/mtt_interop"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tensors = out / "digits_tensors.pt"
    if not tensors.exists():
        from paper_code import save_tensors

        from utils.data import load_dataset

        digits = load_dataset("Digits", normalize=True)
        save_tensors(tensors, "Digits", digits.train, digits.test)
    mtt = [sys.executable, str(ROOT / "benchmarks/mtt_code.py"), "--mtt-code", str(args.mtt_code.resolve()),
           "--data", str(tensors), "--seed", "0"]
    ours_buffer, mtt_buffer = out / "buffers_ours", out / "buffers_mtt"
    steps = {
        "our buffer.py": run([sys.executable, str(ROOT / "methods/MTT/buffer.py"), *BUFFER, "--random_seed=0",
                              f"--buffer_path={ours_buffer}"], out / "buffer_ours.log"),
        "MTT's buffer.py": run([*mtt, "buffer.py", *BUFFER, f"--buffer_path={mtt_buffer}"], out / "buffer_mtt.log"),
    }
    steps["MTT's distill.py on our buffer"] = run(
        [*mtt, "--result", str(out / "mtt_on_ours.pt"), "distill.py", *DISTILL, f"--buffer_path={ours_buffer}"],
        out / "mtt_on_ours.log")
    steps["our distill.py on MTT's buffer"] = run(
        [sys.executable, str(ROOT / "methods/MTT/distill.py"), *DISTILL, f"--buffer_path={mtt_buffer}",
         "--random_seed=0", f"--save_path={out / 'ours_on_mtt'}"], out / "ours_on_mtt.log")
    for step, ok in steps.items():
        print(f"{step}: {'ok' if ok else 'FAILED (see its log in ' + str(out) + ')'}")
    sys.exit(0 if all(steps.values()) else 1)


if __name__ == "__main__":
    main()
