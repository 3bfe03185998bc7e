"""The training engine: a stacked ensemble takes exactly the steps each model would take alone."""

import math

import pytest
import torch

from networks import batchnorm_layers
from utils import engine
from utils.engine import (
    NetworkSpec,
    Schedule,
    TensorSource,
    build_seeded_network,
    evaluate_models,
    paper_eval_schedule,
    train_and_test,
    train_models,
)
from utils.runtime import Runtime
from utils.seeding import make_generator


def _toy_source(n=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 8, 8, generator=gen)
    labels = torch.arange(n) % 4
    images += labels.view(-1, 1, 1, 1).float()  # learnable signal
    return TensorSource(images, labels)


def _train(stack: bool, name="ConvNetW32", augment=None, epochs=2, seeds=(11, 12, 13), models=None):
    source = _toy_source()
    models = models or [build_seeded_network(name, 1, 4, (8, 8), s) for s in seeds]
    schedule = Schedule(epochs=epochs, batch_size=10, lr=0.05, momentum=0.9, weight_decay=5e-3, milestones=(1,),
                        augment=augment)
    train_models(models, source, schedule, [make_generator(s) for s in seeds], stack=stack)
    return models


def test_stacked_ensemble_equals_one_by_one_training():
    # Same seeds, same batch order, same SGD: only float summation order may differ (atol 1e-5).
    stacked, alone = _train(stack=True), _train(stack=False)
    for model_a, model_b in zip(stacked, alone):
        for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    # and training changed the weights (the test could fail)
    fresh = build_seeded_network("ConvNetW32", 1, 4, (8, 8), 11)
    assert not torch.allclose(fresh.classifier.weight, stacked[0].classifier.weight)


def test_stacked_equals_alone_with_augmentation():
    flip = lambda x, g: torch.where(torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5, x.flip(3), x)
    stacked, alone = _train(stack=True, augment=flip), _train(stack=False, augment=flip)
    for model_a, model_b in zip(stacked, alone):
        assert torch.allclose(model_a.classifier.weight, model_b.classifier.weight, atol=1e-5, rtol=1e-4)


def test_batchnorm_models_train_one_by_one():
    # Asked to stack, BatchNorm models still train one after another: each model's own forward runs on
    # every batch of its training (a stacked ensemble would call a functional copy instead), all of model
    # 0's batches before model 1's, and each ends bit for bit where training it alone ends.
    seeds = (11, 12, 13)
    models = [build_seeded_network("ConvNetBN", 1, 4, (8, 8), s) for s in seeds]
    calls = []
    for k, model in enumerate(models):
        model.register_forward_hook(lambda module, args, out, k=k: calls.append(k))
    _train(stack=True, epochs=2, seeds=seeds, models=models)
    batches = 2 * math.ceil(len(_toy_source()) / 10)  # epochs x batches per epoch
    assert calls == [k for k in range(len(models)) for _ in range(batches)]
    for seed, model in zip(seeds, models):
        alone = _train(stack=False, name="ConvNetBN", epochs=2, seeds=[seed])[0]
        assert all(torch.equal(value, alone.state_dict()[key]) for key, value in model.state_dict().items())
        assert all(int(bn.num_batches_tracked) == batches for bn in batchnorm_layers(model))  # stats updated


def test_evaluate_models_stacked_equals_single():
    source = _toy_source(n=30)
    models = [build_seeded_network("ConvNetW32", 1, 4, (8, 8), s) for s in (1, 2)]
    assert evaluate_models(models, source, batch_size=7, stack=True) == evaluate_models(models, source, stack=False)


def test_learning_rate_decays_after_milestone():
    source = _toy_source(n=10)
    model = build_seeded_network("MLP", 1, 4, (8, 8), 0)
    seen = []
    schedule = Schedule(epochs=3, batch_size=10, lr=1.0, momentum=0.0, weight_decay=0.0, milestones=(1,))
    original_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    torch.optim.SGD.step = spy
    try:
        train_models([model], source, schedule, [make_generator(0)])
    finally:
        torch.optim.SGD.step = original_step
    assert seen == pytest.approx([1.0, 0.1, 0.1])


def test_paper_eval_schedule_matches_paper():
    # evaluate_synset: Epoch+1 passes, decay after the pass with index Epoch//2+1.
    schedule = paper_eval_schedule(300, 0.01, 256)
    assert schedule.epochs == 301 and schedule.milestones == (152,) and schedule.restart_optimizer


def test_train_and_test_reports_final_and_best():
    source = _toy_source()
    schedule = Schedule(epochs=4, batch_size=16, lr=0.05)
    result = train_and_test(NetworkSpec("ConvNetW32", 1, 4, (8, 8)), [0, 1], source, source, schedule,
                            runtime=Runtime(torch.device("cpu")),
                            test_every=2, keep_best_states=True)
    assert len(result.final) == 2 and all(b >= f for b, f in zip(result.best, result.final))
    assert result.best_epoch[0] in (2, 4) and set(result.best_states[0]) >= {"classifier.weight"}


def test_default_never_stacks_on_cpu():
    models = [build_seeded_network("ConvNetW32", 1, 4, (8, 8), s) for s in (1, 2)]
    assert [ids for ids, _ in engine._groups(models, None, batches_per_epoch=1)] == [[0], [1]]
    assert [ids for ids, _ in engine._groups(models, True, batches_per_epoch=5)] == [[0, 1]]
