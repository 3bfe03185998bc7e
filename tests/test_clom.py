"""CLoM: the class-sum forms equal the |B| x |S| formula; pools, adapters, caches and bad input."""

import json

import pytest
import torch
import torch.nn.functional as F

from methods.clom import ClomOptions, build_clom_loss, ce_class_sum, class_sums, cos_class_sum
from methods.DC_DSA_DM.flags import parse_weight_map
from methods.reference import clom_direct
from networks import build_network
from utils.engine import TensorSource
from utils.errors import UserError
from utils.io import POOL_INFO_NAME, pool_checkpoint_path
from utils.pools import InputSpace, load_pool, make_input_adapter

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


# ---------------------------------------------------------------- helpers
def save_pool_model(root, dataset, arch, index, epoch, channel, im_size, num_classes, mean, std, seed=0):
    """A freshly built network + its model_info.json, where train_original_models.py would put them."""
    torch.manual_seed(seed)
    net = build_network(arch, channel, num_classes, im_size)
    path = pool_checkpoint_path(dataset, arch, index, epoch, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    info = {
        "dataset": dataset,
        "architecture": arch,
        "normalized": True,
        "mean": list(mean),
        "std": list(std),
        "channel": channel,
        "im_size": [im_size, im_size],
        "num_classes": num_classes,
        "class_names": [str(c) for c in range(num_classes)],
        "seed": seed,
        "test_acc": {},
    }
    (path.parent / POOL_INFO_NAME).write_text(json.dumps(info))
    return net


def cifar_like(n, num_classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.arange(n) % num_classes


def clom(root, distance="cos", batch_size=0, pool=("ConvNetW32",), source="CIFAR10", images=None, labels=None,
         num_classes=10, alphas=(2.0,), **options):
    """build_clom_loss on CIFAR-like real images (a tensor pair, or an ImageSource given as `images`)."""
    if images is None:
        images, labels = cifar_like(60, num_classes)
    real = images if labels is None else TensorSource(images, labels, num_classes)
    settings = ClomOptions(distance=distance, alphas=None if alphas is None else list(alphas), models_pool=list(pool),
                           epoch=1, source_dataset=source, batch_size=batch_size, pool_root=str(root), **options)
    space = InputSpace(3, (32, 32), True, CIFAR_MEAN, CIFAR_STD)
    return build_clom_loss(settings, real, space, "cpu", seed=3)


class LazyImages:
    """An ImageSet-like source: images only through images(idx)."""

    def __init__(self, images, labels, num_classes=10):
        self._images, self.labels, self.num_classes = images, labels, num_classes

    def images(self, idx=None):
        return self._images if idx is None else self._images[idx]

    def __len__(self):
        return len(self.labels)


@pytest.fixture(scope="module")
def cifar_pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained_model")
    save_pool_model(root, "CIFAR10", "ConvNetW32", 0, 1, 3, 32, 10, CIFAR_MEAN, CIFAR_STD)
    save_pool_model(root, "CIFAR100", "ConvNetW32", 0, 1, 3, 32, 100, CIFAR_MEAN, CIFAR_STD)
    return root


# ---------------------------------------------------------------- the maths
@pytest.mark.parametrize("batch, syn, classes", [(7, 5, 3), (64, 20, 10), (300, 50, 100)])
def test_class_sum_forms_equal_the_matrix_formula(batch, syn, classes):
    gen = torch.Generator().manual_seed(batch)
    dtype = torch.float64
    real_labels = torch.randint(classes, (batch,), generator=gen)
    syn_labels = torch.randint(classes, (syn,), generator=gen)
    counts = torch.bincount(real_labels, minlength=classes)
    image_syn = torch.randn(syn, 12, generator=gen, dtype=dtype, requires_grad=True)
    to_logits = torch.randn(12, classes, generator=gen, dtype=dtype)  # a stand-in differentiable model
    to_features = torch.randn(12, 9, generator=gen, dtype=dtype)
    real_features = torch.randn(batch, 9, generator=gen, dtype=dtype)

    def both(fast, direct):
        values = []
        for fn in (fast, direct):
            loss = fn()
            (grad,) = torch.autograd.grad(loss, image_syn)
            values.append((loss, grad))
        torch.testing.assert_close(values[0][0], values[1][0], rtol=1e-6, atol=0)
        torch.testing.assert_close(values[0][1], values[1][1], rtol=1e-6, atol=1e-12)

    both(
        lambda: ce_class_sum(image_syn @ to_logits, syn_labels, counts),
        lambda: clom_direct("ce", image_syn @ to_logits, syn_labels, real_labels),
    )
    sums = class_sums(F.normalize(real_features, dim=1), real_labels, classes)
    both(
        lambda: cos_class_sum(image_syn @ to_features, syn_labels, sums, counts),
        lambda: clom_direct("cos", image_syn @ to_features, syn_labels, real_labels, real_features),
    )


def test_ce_plain_is_alpha_times_cross_entropy(cifar_pool):
    images, labels = cifar_like(20)
    loss = clom(cifar_pool, "ce_plain", images=images, labels=labels)
    model = loss.pool[0].members[0].model
    syn, syn_labels = cifar_like(10, seed=1)
    torch.testing.assert_close(loss(syn, syn_labels), 2.0 * F.cross_entropy(model(syn), syn_labels))


@pytest.mark.parametrize("distance, feature", [("ce", "embed"), ("cos", "embed"), ("cos", "logits")])
def test_pool_loss_equals_direct_and_all_images_exactly(cifar_pool, distance, feature):
    images, labels = cifar_like(60)
    syn, syn_labels = cifar_like(10, seed=1)
    syn.requires_grad_(True)
    model = load_pool("CIFAR10", ["ConvNetW32"], 1, 1, "cpu", root=str(cifar_pool))[0].members[0].model
    features = model.embed if feature == "embed" else model
    with torch.no_grad():
        real_out = features(images)
    direct = clom_direct(
        distance, model(syn) if distance == "ce" else features(syn), syn_labels, labels, real_out, alpha=2.0
    )
    (direct_grad,) = torch.autograd.grad(direct, syn)
    for batch_size in (0, 60, 1000):  # 0 and >= N: every real image, no sampling
        loss_fn = clom(cifar_pool, distance, batch_size, images=images, labels=labels, feature=feature)
        assert loss_fn.full_batch and loss_fn.draw_real_batch() is None
        ours = loss_fn(syn, syn_labels)
        (ours_grad,) = torch.autograd.grad(ours, syn)
        torch.testing.assert_close(ours, direct, rtol=1e-5, atol=0)
        torch.testing.assert_close(ours_grad, direct_grad, rtol=1e-4, atol=1e-7)


def test_batch_draw_is_reproducible_and_cache_equals_on_the_fly(cifar_pool):
    images, labels = cifar_like(60)
    syn, syn_labels = cifar_like(10, seed=1)
    cached = clom(cifar_pool, "cos", 16, images=images, labels=labels)
    again = clom(cifar_pool, "cos", 16, images=images, labels=labels)
    lazy = LazyImages(images, labels)  # an ImageSet-like object instead of a tensor
    on_the_fly = clom(cifar_pool, "cos", 16, images=lazy, labels=None, cache_gb=0)
    assert cached.cache_bytes > 0 and on_the_fly.cache_bytes == 0
    assert "cached" in cached.describe() and "computed per step" in on_the_fly.describe()
    for _ in range(3):
        drawn = cached.draw_real_batch()
        assert len(drawn) == 16 and len(set(drawn.tolist())) == 16  # without replacement
        torch.testing.assert_close(drawn, again.draw_real_batch(), rtol=0, atol=0)
        on_the_fly.draw_real_batch()
    again.reseed(3)  # the seed `clom` builds with: the draws start over
    torch.testing.assert_close(again.draw_real_batch(), clom(cifar_pool, "cos", 16).draw_real_batch())
    for _ in range(3):
        a, b = cached(syn, syn_labels), on_the_fly(syn, syn_labels)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
        assert torch.isfinite(a)


def test_cached_batch_sums_match_a_direct_batch(cifar_pool):
    images, labels = cifar_like(60)
    loss_fn = clom(cifar_pool, "cos", 25, images=images, labels=labels)
    state = loss_fn.states[0][0]
    idx = loss_fn.draw_real_batch()
    direct = class_sums(loss_fn.unit_real_features(state, idx), labels[idx], 10)
    torch.testing.assert_close(loss_fn.real_class_sums(state, idx), direct, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- input spaces
def test_out_of_distribution_pool_on_other_shapes(tmp_path):
    save_pool_model(tmp_path, "MNIST", "ConvNetW32", 0, 1, 1, 28, 10, (0.1307,), (0.3081,))
    syn, syn_labels = cifar_like(10, seed=1)
    syn.requires_grad_(True)
    loss_fn = clom(tmp_path, "cos", 16, source="MNIST")
    loss = loss_fn(syn, syn_labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0


def test_input_adapter_maps_spaces_and_is_identity_when_equal():
    cifar = InputSpace(3, (32, 32), True, CIFAR_MEAN, CIFAR_STD)
    assert isinstance(make_input_adapter(cifar, cifar), torch.nn.Identity)
    pixels = torch.rand(2, 3, 32, 32)
    normalized = (pixels - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(
        1, 3, 1, 1
    )
    raw = make_input_adapter(cifar, InputSpace(3, (32, 32), False))(normalized)
    torch.testing.assert_close(raw, pixels)
    color = make_input_adapter(InputSpace(1, (28, 28), False), cifar)(torch.rand(2, 1, 28, 28))
    assert color.shape == (2, 3, 32, 32)


def test_input_adapter_uses_luminance_and_antialiased_shrinking():
    cifar = InputSpace(3, (32, 32), True, CIFAR_MEAN, CIFAR_STD)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    to_gray16 = make_input_adapter(cifar, InputSpace(1, (16, 16), True, (0.5,), (0.25,)))
    # 3 -> 1 channels: ITU-R 601 luminance (a pure red, green, blue image), not the plain mean of R, G, B
    primaries = torch.eye(3).view(3, 3, 1, 1).expand(3, 3, 32, 32)
    gray = to_gray16((primaries - mean) / std) * 0.25 + 0.5
    torch.testing.assert_close(gray.mean(dim=(1, 2, 3)), torch.tensor([0.299, 0.587, 0.114]))
    torch.testing.assert_close(gray, gray.mean(dim=(2, 3), keepdim=True).expand_as(gray))  # constant stays constant
    # Shrinking is antialiased: fine stripes average out instead of aliasing into a coarse pattern
    stripes = (torch.arange(64) % 3 == 0).float().view(1, 1, 1, 64).expand(1, 1, 64, 64)
    shrunk = make_input_adapter(InputSpace(1, (64, 64), False), InputSpace(1, (16, 16), False))(stripes)
    aliased = F.interpolate(stripes, size=(16, 16), mode="bilinear", antialias=False)
    assert shrunk.std() < 0.25 * aliased.std()
    torch.testing.assert_close(shrunk.mean(), stripes.mean(), atol=0.02, rtol=0)
    # Enlarging is plain bilinear; gradients reach the target images
    small = torch.rand(2, 1, 28, 28, requires_grad=True)
    big = make_input_adapter(InputSpace(1, (28, 28), False), InputSpace(1, (32, 32), False))(small)
    torch.testing.assert_close(big, F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False))
    big.sum().backward()
    assert small.grad is not None and small.grad.abs().sum() > 0


# ---------------------------------------------------------------- foundation models
def _foundation_roundtrip(tmp_path, name, make_model):
    weights = tmp_path / "weights.pth"
    torch.save(make_model().state_dict(), weights)
    images, labels = cifar_like(8, num_classes=4)
    loss_fn = clom(
        tmp_path,
        "cos",
        0,
        pool=[name],
        images=images,
        labels=labels,
        num_classes=4,
        model_num=3,
        weights={name: str(weights)},
    )
    (arch,) = loss_fn.pool
    member = arch.members[0]
    assert arch.foundation and len(arch.members) == 1 and member.num_classes is None
    assert not any(p.requires_grad for p in member.model.parameters()) and not member.model.training
    syn = images[:4].clone().requires_grad_(True)
    loss = loss_fn(syn, labels[:4])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(syn.grad).all()
    return member


def test_timm_model_loads_as_pool_member(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra (requirements-extras.txt)")
    member = _foundation_roundtrip(
        tmp_path, "timm:test_vit", lambda: timm.create_model("test_vit", pretrained=False)
    )  # with its head
    assert member.input_space.im_size == (160, 160)


def test_open_clip_model_loads_as_pool_member(tmp_path):
    open_clip = pytest.importorskip(
        "open_clip", reason="open_clip is an optional extra (requirements-extras.txt)"
    )
    member = _foundation_roundtrip(
        tmp_path, "open_clip:ViT-S-32", lambda: open_clip.create_model("ViT-S-32", pretrained=None)
    )
    assert member.input_space.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def test_torchvision_model_loads_as_pool_member(tmp_path):
    models = pytest.importorskip("torchvision.models", reason="torchvision is not installed")
    member = _foundation_roundtrip(
        tmp_path, "torchvision:mobilenet_v3_small", lambda: models.mobilenet_v3_small(weights=None)
    )
    assert member.input_space.im_size == (224, 224)
    assert member.model.embed(torch.zeros(1, 3, 224, 224)).shape == (1, 1024)  # classifier[-1] removed


def test_parse_weight_map():
    assert parse_weight_map(["timm:resnet18=/w.pth", "open_clip:RN50 = download"]) == {
        "timm:resnet18": "/w.pth",
        "open_clip:RN50": "download",
    }
    for bad in (["timm:resnet18"], ["ConvNet=/w.pth"], ["timm:a=x", "timm:a=y"]):
        with pytest.raises(UserError):
            parse_weight_map(bad)


def test_foundation_model_without_weights_or_with_ce_is_refused(tmp_path):
    with pytest.raises(UserError, match="--CLoM_weights"):
        load_pool("unused", ["torchvision:mobilenet_v3_small"], 1, 1, "cpu")
    with pytest.raises(UserError, match="library"):
        load_pool("unused", ["keras:resnet"], 1, 1, "cpu", weights={"keras:resnet": "x"})
    models = pytest.importorskip("torchvision.models", reason="torchvision is not installed")
    weights = tmp_path / "weights.pth"
    torch.save(models.mobilenet_v3_small(weights=None).state_dict(), weights)
    name = "torchvision:mobilenet_v3_small"
    images, labels = cifar_like(8, num_classes=4)
    for distance, feature in (("ce", "embed"), ("ce_plain", "embed"), ("cos", "logits")):
        # a foundation model's embedding has no classes: ce/ce_plain (and cos on logits) have nothing to use
        with pytest.raises(UserError, match="gives embeddings only: use --CLoM_distance cos"):
            clom(tmp_path, distance, 0, pool=[name], images=images, labels=labels, num_classes=4,
                 weights={name: str(weights)}, **({"feature": feature} if distance == "cos" else {}))


# ---------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_user_error(cifar_pool, tmp_path):
    with pytest.raises(UserError, match="alphas has 2 values"):
        clom(cifar_pool, alphas=[1.0, 2.0])
    with pytest.raises(UserError, match="alphas"):
        clom(cifar_pool, alphas=None)
    with pytest.raises(UserError, match="alphas must be finite"):
        clom(cifar_pool, alphas=[float("nan")])
    with pytest.raises(UserError, match="alphas must be >= 0"):
        clom(cifar_pool, alphas=[-5.0])
    with pytest.raises(UserError, match="models_pool"):
        clom(cifar_pool, pool=())
    with pytest.raises(UserError) as missing:
        clom(tmp_path, source="SVHN")
    message = str(missing.value)
    assert "\n" not in message and str(pool_checkpoint_path("SVHN", "ConvNetW32", 0, 1, tmp_path)) in message
    assert "python train_original_models.py --dataset SVHN --model ConvNetW32 --num 1 --epochs 1" in message
    with pytest.raises(UserError, match="CLoM_distance cos"):
        clom(cifar_pool, "ce", source="CIFAR100")  # 100-class pool, 10-class target
    with pytest.raises(UserError, match="unknown pool architecture 'NoSuchNet'"):
        clom(cifar_pool, pool=["NoSuchNet"])
    with pytest.raises(UserError, match="distance must be one of"):
        clom(cifar_pool, "euclid")


def test_cos_works_with_a_pool_of_other_classes(cifar_pool):
    loss_fn = clom(cifar_pool, "cos", 30, source="CIFAR100", alphas=[1.0])
    syn, syn_labels = cifar_like(10, seed=1)
    assert torch.isfinite(loss_fn(syn, syn_labels))
    assert "CIFAR100" in loss_fn.describe() and "30 of 60" in loss_fn.describe()
