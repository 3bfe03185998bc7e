"""Diagnose the compiled training step on CUDA: relative weight differences vs eager, per mode and step count."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import fast  # noqa: E402
from utils.engine import Schedule, TensorSource, build_seeded_network, train_models  # noqa: E402
from utils.seeding import make_generator  # noqa: E402

torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
dev = torch.device("cuda")
gen = torch.Generator().manual_seed(0)
source = TensorSource(torch.randn(100, 3, 32, 32, generator=gen).to(dev), (torch.arange(100) % 10).to(dev), 10)


def train(compiled, epochs, momentum=0.9):
    schedule = Schedule(epochs=epochs, batch_size=256, lr=0.01, momentum=momentum, weight_decay=5e-4)
    models = [build_seeded_network("ConvNet", 3, 10, (32, 32), 1, dev)]
    train_models(models, source, schedule, [make_generator(1, dev)], compiled=compiled)
    return models[0]


def rel(a, b):
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a.parameters(), b.parameters()))


for mode in ({"mode": "reduce-overhead"}, {}):
    fast.compile_options = lambda device, mode=mode: mode
    fast._COMPILED.clear()
    for epochs, momentum in ((1, 0.9), (2, 0.9), (6, 0.9), (6, 0.0)):
        print(mode, epochs, momentum, f"{rel(train(True, epochs, momentum), train(False, epochs, momentum)):.2e}",
              "broken" if fast._BROKEN else "", flush=True)
