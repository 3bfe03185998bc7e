import pickle

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

import networks
from networks import registry
from networks.foundation import FoundationModelError, build_foundation_model, unwrap_state_dict
from utils.errors import UserError
from utils.pools import load_pool

NAMES = networks.list_networks()
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 28, 28), (3, 32, 32), (3, 64, 64), (3, 224, 224)]
BATCHNORM_NAMES = {"ConvNetBN", "ConvNetASwishBN", "AlexNetBN", "VGG11BN", "ResNet18BN", "ResNet18BN_AP"}
NUM_CLASSES = 7


def test_every_paper_network_is_registered():
    convnets = {"ConvNet", "ConvNetAS", "ConvNetAR", "ConvNetAL", "ConvNetASwish", "ConvNetASwishBN"}
    convnets |= {f"ConvNetD{d}" for d in range(1, 7)} | {f"ConvNetW{w}" for w in (32, 64, 128, 256)}
    convnets |= {f"ConvNet{s}" for s in ("NN", "BN", "LN", "IN", "GN", "NP", "MP", "AP")}
    others = {"MLP", "LeNet", "AlexNet", "AlexNetBN", "VGG11", "VGG11BN"}
    others |= {"ResNet18", "ResNet18BN", "ResNet18BN_AP"}
    assert set(NAMES) == convnets | others
    assert NAMES == sorted(NAMES)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_embed_work_on_every_shape(name, shape):
    model = networks.build_network(name, shape[0], NUM_CLASSES, shape[1:])
    assert isinstance(model.classifier, nn.Linear)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        features = model.embed(x)
        logits = model.classifier(features)
        # forward == classifier(embed) costs a second pass: checked where cheap (the code path is shared).
        if shape[-1] <= 32:
            torch.testing.assert_close(model(x), logits)
    assert features.shape == (2, model.classifier.in_features)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetLN", "LeNet", "AlexNet", "VGG11", "ResNet18BN_AP"])
def test_non_square_images(name):
    model = networks.build_network(name, 3, NUM_CLASSES, (24, 40))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 24, 40)).shape == (2, NUM_CLASSES)


def test_int_im_size_means_square():
    a = networks.build_network("ConvNet", 3, 10, 32)
    b = networks.build_network("ConvNet", 3, 10, (32, 32))
    c = networks.build_network("ConvNet", 3, 10, torch.Size([32, 32]))
    assert a.classifier.in_features == b.classifier.in_features == c.classifier.in_features == 128 * 4 * 4


def test_paper_feature_sizes():
    # Sizes the paper's hard-coded layers assume for MNIST (1x28x28) and CIFAR (3x32x32).
    expected = {"ConvNet": 2048, "AlexNet": 3072, "VGG11": 512, "ResNet18": 512, "MLP": 128, "LeNet": 84}
    for shape in [(1, 28, 28), (3, 32, 32)]:
        for name, dim in expected.items():
            assert networks.build_network(name, shape[0], 10, shape[1:]).classifier.in_features == dim
    assert networks.build_network("LeNet", 1, 10, 28).fc_1.in_features == 16 * 5 * 5
    assert networks.build_network("ResNet18BN_AP", 1, 10, 28).classifier.in_features == 512 * 3 * 3
    assert networks.build_network("ResNet18BN_AP", 3, 10, 32).classifier.in_features == 512 * 4 * 4


def test_unknown_name_lists_known_names():
    with pytest.raises(networks.UnknownNetworkError) as error:
        networks.build_network("Foo", 3, 10, 32)
    message = str(error.value)
    assert "'Foo'" in message and "ConvNet, ConvNetAL" in message and "ResNet18BN_AP" in message
    assert isinstance(error.value, ValueError)


def test_bad_im_size_is_rejected():
    with pytest.raises(ValueError):
        networks.build_network("ConvNet", 3, 10, (32, 32, 3))


def test_register_adds_a_buildable_name(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))

    @networks.register("Tiny")
    def tiny(channel, num_classes, im_size):
        return nn.Linear(channel * im_size[0] * im_size[1], num_classes)

    assert "Tiny" in networks.list_networks()
    assert networks.build_network("Tiny", 1, 3, 4).out_features == 3
    with pytest.raises(ValueError):
        networks.register("Tiny")(tiny)


def test_build_uses_the_callers_rng_and_never_reseeds():
    torch.manual_seed(123)
    first = networks.build_network("ConvNet", 3, 10, 32)
    torch.manual_seed(123)
    second = networks.build_network("ConvNet", 3, 10, 32)
    third = networks.build_network("ConvNet", 3, 10, 32)
    for key, value in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[key], value)
    assert not torch.equal(second.classifier.weight, third.classifier.weight)


def test_build_leaves_model_on_cpu_unwrapped_with_fresh_batchnorm_stats():
    model = networks.build_network("ResNet18BN", 1, 10, 8)
    assert type(model).__name__ == "ResNet" and model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    bn = model.bn1
    assert int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_models_do_not_support_stacking(name):
    model = networks.build_network(name, 1, NUM_CLASSES, 8)
    assert networks.has_batchnorm(model) == (name in BATCHNORM_NAMES)
    assert networks.supports_stacking(model) == (name not in BATCHNORM_NAMES)


def _stacked_forward(models, x):
    params, buffers = stack_module_state(models)
    template = models[0]

    def forward(p, b, inputs):
        return functional_call(template, (p, b), (inputs,))

    return vmap(forward, in_dims=(0, 0, None))(params, buffers, x)


def test_stacked_convnets_match_separate_forwards():
    models = [networks.build_network("ConvNet", 3, 10, 32) for _ in range(2)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stacked = _stacked_forward(models, x)
        separate = torch.stack([model(x) for model in models])
    torch.testing.assert_close(stacked, separate, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in BATCHNORM_NAMES])
def test_every_stackable_network_runs_under_vmap(name):
    models = [networks.build_network(name, 1, NUM_CLASSES, 8) for _ in range(2)]
    assert networks.supports_stacking(models[0])
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        stacked = _stacked_forward(models, x)
        separate = torch.stack([model(x) for model in models])
    torch.testing.assert_close(stacked, separate, atol=1e-5, rtol=1e-4)


def test_vmapped_gradients_match_per_model_backward():
    models = [networks.build_network("ConvNet", 3, 10, 16) for _ in range(2)]
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 4])
    params, buffers = stack_module_state(models)

    def loss(p, b):
        return nn.functional.cross_entropy(functional_call(models[0], (p, b), (x,)), y)

    stacked_grads = vmap(grad(loss))(params, buffers)
    for index, model in enumerate(models):
        nn.functional.cross_entropy(model(x), y).backward()
        for key, param in model.named_parameters():
            torch.testing.assert_close(stacked_grads[key][index], param.grad, atol=1e-5, rtol=1e-4)


def test_unwrap_state_dict_removes_wrappers_and_the_dataparallel_prefix():
    weights = {"features.0.weight": torch.zeros(2), "classifier.bias": torch.ones(1)}
    prefixed = {f"module.{key}": value for key, value in weights.items()}
    for saved in (weights, prefixed, {"state_dict": prefixed, "epoch": 3}, {"model": weights},
                  {"state_dict": {"model": prefixed}}):
        unwrapped = unwrap_state_dict(saved)
        assert list(unwrapped) == list(weights) and all(unwrapped[k] is v for k, v in weights.items())
    assert unwrap_state_dict([1, 2]) == [1, 2]  # not a checkpoint: left for the caller to refuse


def test_foundation_errors_name_the_context_and_keep_the_reason_as_cause(tmp_path):
    pytest.importorskip("torchvision.models", reason="torchvision is not installed")
    name, garbage = "torchvision:mobilenet_v3_small", tmp_path / "weights.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FoundationModelError) as error:
        build_foundation_model(name, str(garbage))
    assert str(error.value) == f"weights for {name!r}: cannot read {garbage}"
    assert isinstance(error.value.__cause__, pickle.UnpicklingError)
    # The user's one line (utils.pools) is the context, then the library's reason.
    with pytest.raises(UserError) as user_error:
        load_pool("unused", [name], 1, 1, "cpu", weights={name: str(garbage)})
    message = str(user_error.value)
    assert message.startswith(f"{error.value}: UnpicklingError: ") and "\n" not in message
