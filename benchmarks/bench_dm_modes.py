"""DM's loss on a GPU: eager vs compiled ("default": fused kernels) vs compiled with a CUDA graph
("reduce-overhead"), per DM iteration (loss, backward to the images, SGD step on them), one run.

    python benchmarks/bench_dm_modes.py                 # ipc 10 and 50, batch_real 256, CUDA
    python benchmarks/bench_dm_modes.py --device cpu --batch_real 8 --repeats 2

Each iteration uses the next of a few fresh random networks, as DM does; the median over --repeats is printed
with the relative loss difference to eager.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The project's modules are imported once CUDA is known to be there (main): without it the script ends at once.

MODES = ("eager", "default", "reduce-overhead")


def time_mode(mode: str, nets, real, syn, repeats: int, device) -> tuple[float, float]:
    from methods.DC_DSA_DM import distribution_matching as dm

    compiled = mode != "eager"
    if compiled:
        dm.COMPILE_MODE = mode
    optimizer = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    times, first_loss = [], None
    for i in range(3 + repeats):  # 3 warm-up iterations: compiling, graph capture
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = dm.distribution_matching_loss(nets[i % len(nets)], real, syn, compiled)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i == 0:
            first_loss = float(loss.detach())
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times), first_loss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch_real", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ipcs", default="10,50")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("error: bench_dm_modes.py needs CUDA (--device cpu for a smoke run)\n")
        return 2
    from networks import build_network
    from utils import fast
    from utils.seeding import make_generator

    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.manual_seed(0)
    nets = [build_network("ConvNet", 3, 10, (32, 32)).to(device).requires_grad_(False) for _ in range(4)]
    gen = make_generator(1, device)
    real = torch.randn(10, args.batch_real, 3, 32, 32, generator=gen, device=device)
    print(f"device {device} | DM iteration, ConvNet, 10 classes x {args.batch_real} real | median of {args.repeats}")
    print("| ipc | " + " | ".join(MODES) + " | eager / best compiled | loss rel. diff (default, graph) |")
    print("|---|" + "---|" * (len(MODES) + 2))
    for ipc in map(int, args.ipcs.split(",")):
        start = torch.randn(10, ipc, 3, 32, 32, generator=gen, device=device)
        results = {}
        for mode in MODES:
            fast._COMPILED.clear()
            results[mode] = time_mode(mode, nets, real, start.clone().requires_grad_(), args.repeats, device)
        eager_s, eager_loss = results["eager"]
        best = min(results["default"][0], results["reduce-overhead"][0])
        diffs = ", ".join(f"{abs(results[m][1] - eager_loss) / abs(eager_loss):.1e}" for m in MODES[1:])
        cells = " | ".join(f"{1000 * results[m][0]:.2f} ms" for m in MODES)
        print(f"| {ipc} | {cells} | {eager_s / best:.2f}x | {diffs} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
