"""How far the compiled CUDA training step drifts from the eager one: the largest relative weight difference
(over the parameters, ||compiled - eager|| / ||eager||) after training one ConvNet on 100 random images, for
each way of running the compiled step (our CUDA graph on persistent tensors, the default; plain inductor) and a
few epoch counts, fp32 (TF32 off).

    python benchmarks/check_fast_cuda.py

Needs CUDA. tests/test_cuda.py::test_compiled_cuda_graph_step_equals_eager asserts the bound; this prints
the numbers behind it, one line per case ("broken": compiling failed and the step ran eagerly).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import fast  # noqa: E402
from utils.engine import Schedule, TensorSource, build_seeded_network, train_models  # noqa: E402
from utils.seeding import make_generator  # noqa: E402


def train(source: TensorSource, device: torch.device, compiled: bool, epochs: int, momentum: float = 0.9):
    schedule = Schedule(epochs=epochs, batch_size=256, lr=0.01, momentum=momentum, weight_decay=5e-4)
    models = [build_seeded_network("ConvNet", 3, 10, (32, 32), 1, device)]
    train_models(models, source, schedule, [make_generator(1, device)], compiled=compiled)
    return models[0]


def relative_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a.parameters(), b.parameters()))


def main() -> int:
    if not torch.cuda.is_available():
        sys.stderr.write("error: check_fast_cuda.py needs CUDA\n")
        return 2
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    source = TensorSource(torch.randn(100, 3, 32, 32, generator=gen).to(device), (torch.arange(100) % 10).to(device),
                          10)
    for name, static in (("our graph", {"cuda"}), ("inductor", set())):
        fast.STATIC_STEP_DEVICES = static
        fast._COMPILED.clear()
        fast._STATIC.clear()
        for epochs, momentum in ((1, 0.9), (2, 0.9), (6, 0.9), (6, 0.0)):
            difference = relative_difference(train(source, device, True, epochs, momentum),
                                             train(source, device, False, epochs, momentum))
            print(name, epochs, momentum, f"{difference:.2e}", "broken" if fast._BROKEN else "", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
