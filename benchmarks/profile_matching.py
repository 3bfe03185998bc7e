"""Where the time of one DC outer step goes, on a GPU: variants of the batched path against the per-class loop.

Times (CUDA events, median of --repeats after --warmup) for CIFAR-shaped data, ConvNet, 10 classes:
  step      the whole matching loss + backward (bench_distill's step), batched and loop;
  real      the real side only (per-class gradients, no graph), batched (vmap) and loop;
  syn       the synthetic side only (per-class gradients with graph + distance + backward), batched and loop;
each with cuDNN autotuning off and on, and the batched step with channels-last images and weights, and
under bf16 autocast.
Then the top CUDA kernels of the batched step (torch.profiler).

    python benchmarks/profile_matching.py --ipc 10 --batch_real 256
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


def cuda_time(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:  # --device cpu: a smoke run of this script
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def channels_last_5d(x: torch.Tensor) -> torch.Tensor:
    """(C, n, ch, H, W) whose every (n, ch, H, W) slice, and the folded (C*n, ch, H, W), is channels-last."""
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch_real", type=int, default=256)
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("error: profile_matching.py needs CUDA (--device cpu for a smoke run)\n")
        return 2
    from methods.DC_DSA_DM.gradient_matching import gradient_matching_loss, match_distance, per_class_gradients
    from methods.DC_DSA_DM.synset import class_labels
    from methods.reference import gradient_matching_loss_loop
    from networks import build_network

    torch.manual_seed(0)
    C = 10
    model = build_network(args.model, 3, C, (32, 32)).to(device)
    params = list(model.parameters())
    real = torch.randn(C, args.batch_real, 3, 32, 32, device=device)
    syn = torch.randn(C, args.ipc, 3, 32, 32, device=device, requires_grad=True)
    labels_real, labels_syn = class_labels(C, args.batch_real, device), class_labels(C, args.ipc, device)
    gw_real_fixed = [g.detach() for g in per_class_gradients(model, real, labels_real, create_graph=False)]

    def step_batched(r=real, s=syn):
        gradient_matching_loss(model, r, s).backward()

    def step_loop():
        gradient_matching_loss_loop(model, real, syn).backward()

    def real_batched():
        per_class_gradients(model, real, labels_real, create_graph=False)

    def real_loop():
        for c in range(C):
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(real[c]), labels_real[c]), params)

    def syn_batched():
        gw = per_class_gradients(model, syn, labels_syn, create_graph=True)
        match_distance(gw, gw_real_fixed, "ours").sum().backward()

    def syn_loop():
        loss = syn.new_zeros(())
        for c in range(C):
            gw = torch.autograd.grad(torch.nn.functional.cross_entropy(model(syn[c]), labels_syn[c]), params,
                                     create_graph=True)
            loss = loss + match_distance([g[None] for g in gw], [g[c:c + 1] for g in gw_real_fixed], "ours").sum()
        loss.backward()

    rows = []
    for autotune in (False, True):
        torch.backends.cudnn.benchmark = autotune
        for name, fn in (("step", (step_batched, step_loop)), ("real", (real_batched, real_loop)),
                         ("syn", (syn_batched, syn_loop))):
            batched, loop = (cuda_time(f, args.warmup, args.repeats) for f in fn)
            rows.append((name, autotune, batched, loop))
    model_cl = model.to(memory_format=torch.channels_last)
    real_cl, syn_cl = channels_last_5d(real), channels_last_5d(syn.detach()).requires_grad_()
    channels_last = cuda_time(lambda: gradient_matching_loss(model_cl, real_cl, syn_cl).backward(), args.warmup,
                              args.repeats)
    model.to(memory_format=torch.contiguous_format)

    def step_bf16():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = gradient_matching_loss(model, real, syn)
        loss.float().backward()

    bf16 = cuda_time(step_bf16, args.warmup, args.repeats)

    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{card} | {args.model} | ipc {args.ipc} | batch_real {args.batch_real} | "
          f"torch {torch.__version__} | median of {args.repeats}, seconds")
    print("| part | cudnn autotune | batched | loop | loop / batched |")
    print("|------|----------------|---------|------|----------------|")
    for name, autotune, batched, loop in rows:
        print(f"| {name} | {'on' if autotune else 'off'} | {batched:.4f} | {loop:.4f} | {loop / batched:.2f}x |")
    print(f"| step, channels-last | on | {channels_last:.4f} | - | {rows[3][3] / channels_last:.2f}x |")
    print(f"| step, bf16 autocast | on | {bf16:.4f} | - | {rows[3][3] / bf16:.2f}x |")

    torch.backends.cudnn.benchmark = True
    from torch.profiler import ProfilerActivity, profile
    if device.type == "cuda":
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step_batched()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
