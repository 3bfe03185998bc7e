"""What the fused kernels save: FLOPs, kernels and bytes moved per step, eager vs inductor-fused, on the CPU.

    python benchmarks/fusion_bytes.py            # ConvNet 3x32x32; inner step on 100 images, real side 10 x 256
    python benchmarks/fusion_bytes.py --model MLP --steps inner --syn_images 2   # tiny (tests): one compile

Two fixed-shape steps of a DC ipc-10 iteration, each the function the fast path compiles:
  inner step  one SGD step (forward, backward, momentum, update) on the 100 synthetic images (utils/fast.py)
  real side   per-class gradients of 10 classes x 256 real images (gradient_matching, compiled real side)

Both are traced once into their aten graph (AOT autograd, no fusion). "Eager" charges every aten operation of
that graph the bytes of its inputs and outputs (views are free), as eager PyTorch runs one kernel per
operation and each reads its inputs from and writes its output to memory (the graph is the one torch.func
runs, where group norm's backward is a dozen elementwise operations; module autograd's single backward kernel
moves somewhat less). "Fused" is inductor's own count for
the kernels it generates from the same graph (reads + writes of each fused kernel and each library call such
as a convolution), taken from torch._inductor's metrics. FLOPs are torch's FlopCounterMode (matmuls and
convolutions; elementwise work is not counted, and fusing saves none). The counts are of the graphs, so they
hold on any device; the kernels inductor generates for CUDA (Triton) fuse the same way as its CPU kernels.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch._inductor.metrics as inductor_metrics
import torch.nn.functional as F
from torch._dynamo.backends.common import aot_autograd
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from networks import build_network  # noqa: E402
from utils.fast import _sgd_step_function  # noqa: E402
from utils.seeding import make_generator  # noqa: E402


def tensor_bytes(value) -> int:
    return sum(t.numel() * t.element_size() for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor))


def unfused_cost(graphs) -> tuple[int, int]:
    """(operations, bytes read + written) of aten graphs run one kernel per operation; views cost nothing."""
    ops = moved = 0
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            if node.target.is_view:
                continue
            ops += 1
            moved += sum(tensor_bytes(arg.meta.get("val")) for arg in node.all_input_nodes)
            moved += tensor_bytes(node.meta.get("val"))
    return ops, moved


def measure(fn, args, flop_fn=None) -> dict:
    """flop_fn: the same work without vmap, for counting FLOPs (the counter misreads vmap's grouped convolutions)."""
    with FlopCounterMode(display=False) as counter:
        (flop_fn or fn)(*args)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=aot_autograd(fw_compiler=record, bw_compiler=record), dynamic=False)(*args)
    ops, eager_bytes = unfused_cost(graphs)

    torch._dynamo.reset()
    inductor_metrics.reset()
    torch._logging.set_logs(inductor_metrics=True)  # inductor counts bytes only while this log is on
    # keep its per-node dump off the screen: set_logs gives "torch" and each registered child ("torch._inductor",
    # ...) a handler of its own, so every torch logger is silenced while inductor compiles
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "torch" or name.startswith("torch.")]
    handlers = [(logger, logger.handlers) for logger in loggers]
    for logger in loggers:
        logger.handlers = []
    try:
        torch.compile(fn, dynamic=False)(*args)
    finally:
        for logger, saved in handlers:
            logger.handlers = saved
        torch._logging.set_logs()
    return {"gflop": counter.get_total_flops() / 1e9, "eager_ops": ops, "eager_mb": eager_bytes / 1e6,
            "fused_kernels": inductor_metrics.generated_kernel_count,
            "fused_mb": inductor_metrics.num_bytes_accessed / 1e6}


def inner_step(model, images: int):
    params, buffers = stack_module_state([model])
    params = {name: p.detach() for name, p in params.items()}
    momenta = {name: torch.zeros_like(p) for name, p in params.items()}
    gen = make_generator(0)
    x = torch.randn(1, images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (1, images), generator=gen)
    step = _sgd_step_function(model, momentum=0.5, weight_decay=0.0005)
    return step, (params, buffers, momenta, x, y, torch.tensor(0.01)), None


def real_side(model, per_class: int):
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    gen = make_generator(1)
    x = torch.randn(10, per_class, 3, 32, 32, generator=gen)
    y = torch.arange(10).repeat_interleave(per_class).view(10, per_class)

    def class_loss(p, b, images, labels):
        return F.cross_entropy(functional_call(model, (p, b), (images,)), labels)

    def one_class_at_a_time(p, b, images, labels):
        return [grad(class_loss)(p, b, images[c], labels[c]) for c in range(images.shape[0])]

    return vmap(grad(class_loss), in_dims=(None, None, 0, 0)), (params, buffers, x, y), one_class_at_a_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--syn_images", type=int, default=100)
    parser.add_argument("--batch_real", type=int, default=256)
    parser.add_argument("--steps", default="inner,real", help="which steps to measure: inner, real or both")
    args = parser.parse_args()
    chosen = [step.strip() for step in args.steps.split(",") if step.strip()]
    if not chosen or set(chosen) - {"inner", "real"}:
        parser.error(f"--steps takes inner, real or both, got {args.steps!r}")
    torch.manual_seed(0)
    model = build_network(args.model, 3, 10, (32, 32))
    print(f"{args.model} 3x32x32, 10 classes; per step; MB = 1e6 bytes")
    print("| step | GFLOP | eager aten ops | eager MB moved | fused kernels | fused MB moved | bytes saved |")
    print("|---|---|---|---|---|---|---|")
    steps = {}
    if "inner" in chosen:
        steps[f"inner SGD step, {args.syn_images} images"] = inner_step(model, args.syn_images)
    if "real" in chosen:
        steps[f"real side, 10 x {args.batch_real} images"] = real_side(model, args.batch_real)
    for name, (fn, fn_args, flop_fn) in steps.items():
        r = measure(fn, fn_args, flop_fn)
        print(f"| {name} | {r['gflop']:.1f} | {r['eager_ops']} | {r['eager_mb']:.0f} | {r['fused_kernels']} | "
              f"{r['fused_mb']:.0f} | {r['eager_mb'] / r['fused_mb']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
