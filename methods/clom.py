"""CLoM, the Contrastive Loss of pre-trained Models (the paper's loss), in class-sum form.

For a real batch B (labels y_i) and the synthetic set S (labels y_j), with M[i, j] = [y_i == y_j]:

    L = alpha * sum(D * M) / sum(D)

Written as a |B| x |S| matrix this costs |B|·|S|·d per step and a forward pass of the whole real batch.
Both sums collapse to per-class quantities of the real batch (n_c = number of real images of class c):

  ce:  D[i, j] = L_j[y_i], with L_j = -log p*(x_j) the pool model's negative log-probabilities (|S| x C).
       sum(D * M) = sum_j sum_{i: y_i = y_j} L_j[y_j]  = sum_j n_{y_j} · L_j[y_j]
       sum(D)     = sum_j sum_i L_j[y_i]              = sum_j sum_c n_c · L_j[c]
       -> only the real class counts are needed, never a real image.
  cos: D[i, j] = 1 - u_i·v_j, with u_i = F(x_i)/|F(x_i)| (real) and v_j likewise (synthetic).
       With s_c = sum_{i: y_i = c} u_i and s = sum_c s_c:
       sum(D * M) = sum_j sum_{i: y_i = y_j} (1 - u_i·v_j) = sum_j (n_{y_j} - v_j·s_{y_j})
       sum(D)     = sum_j sum_i (1 - u_i·v_j)             = sum_j (|B| - v_j·s)
       -> only the per-class sums of unit real features are needed: O(|S|·d + |S|·C) per step.

The pool is frozen and real images are not augmented, so the unit real features of each pool model are the
same at every step: they are computed once and cached on the device, and a CLoM batch is an index draw into
that cache (too large for `cache_budget_bytes`: the drawn batch's features are computed per step instead,
same result). With the whole data set as the batch only the class sums s_c are kept.

`ce_plain` is what the paper's code computes for `ce`: alpha * CE(model(x_syn), y_syn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from utils.engine import ImageSource
from utils.errors import SettingError, UserError
from utils.io import POOL_ROOT
from utils.pools import InputSpace, PoolArch, draw_pool_member, load_pool, make_input_adapter
from utils.seeding import make_generator

DISTANCES = ("ce", "cos", "ce_plain")
FEATURES = ("embed", "logits")
FEATURE_BATCH_SIZE = 512  # real images per no-grad forward when filling the cache


# ---------------------------------------------------------------- the class-sum forms
# Sums run in float64: both numerator and denominator are differences of large, nearly equal numbers.
def ce_class_sum(
    syn_logits: torch.Tensor, syn_labels: torch.Tensor, real_counts: torch.Tensor
) -> torch.Tensor:
    neg_log_p = -F.log_softmax(syn_logits.double(), dim=1)  # L_j, (|S|, C)
    counts = real_counts.to(neg_log_p)  # n_c
    own_class = neg_log_p.gather(1, syn_labels[:, None]).squeeze(1)  # L_j[y_j]
    matched = (counts[syn_labels] * own_class).sum()  # sum_j n_{y_j} L_j[y_j]
    total = (neg_log_p @ counts).sum()  # sum_j sum_c n_c L_j[c]
    return (matched / total).to(syn_logits.dtype)


def cos_class_sum(
    syn_features: torch.Tensor,
    syn_labels: torch.Tensor,
    real_class_sums: torch.Tensor,
    real_counts: torch.Tensor,
) -> torch.Tensor:
    v = F.normalize(syn_features, dim=1).double()  # (|S|, d)
    sums = real_class_sums.to(v)  # s_c, (C, d)
    counts = real_counts.to(v)  # n_c
    matched = counts[syn_labels].sum() - (v * sums[syn_labels]).sum()  # sum_j n_{y_j} - v_j·s_{y_j}
    total = counts.sum() * len(v) - v.sum(0) @ sums.sum(0)  # sum_j |B| - v_j·s
    return (matched / total).to(syn_features.dtype)


def class_sums(unit_features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """s_c = sum of the rows of class c, in float64: (C, d)."""
    sums = unit_features.new_zeros((num_classes, unit_features.shape[1]), dtype=torch.float64)
    return sums.index_add_(0, labels, unit_features.double())


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n_c. index_add rather than bincount, which on CUDA waits for the device to learn the largest label."""
    counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device)
    return counts.index_add_(0, labels, torch.ones_like(labels))


def cached_class_sums(
    cache: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """s_c over the cache rows `idx`. embedding_bag sums each class's rows without a |B| x d copy."""
    drawn_labels = labels[idx]
    order = torch.argsort(drawn_labels)
    counts = class_counts(drawn_labels, num_classes)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(idx[order], cache, offsets, mode="sum").double()


# ---------------------------------------------------------------- options
@dataclass(frozen=True)
class ClomOptions:
    """CLoM's settings (the paper's --CLoM_* flags, --alphas, --models_pool, --model_num, --epoch, ...)."""

    distance: str  # ce | cos | ce_plain
    alphas: list[float] | None  # one per pool architecture, or one for all
    models_pool: list[str] | None  # architectures (ours) or foundation-model names
    model_num: int = 1  # models per architecture: index_0 .. index_{model_num-1}
    epoch: int = 150  # which saved epoch of the pool to load
    source_dataset: str = ""  # the data set the pool was trained on
    batch_size: int = 256  # real images per CLoM batch; 0 = all
    feature: str = "embed"  # F for cos: embed | logits
    cache_gb: float = 4.0  # device memory for the real-feature cache
    weights: dict[str, str] = field(default_factory=dict)  # foundation model name -> local weights
    pool_root: str = POOL_ROOT


def check_clom_options(options: ClomOptions) -> None:
    """Every CLoM setting checked before anything is loaded."""
    if options.distance not in DISTANCES:
        raise SettingError("clom.distance", f"must be one of {', '.join(DISTANCES)}, got {options.distance!r}")
    if options.feature not in FEATURES:
        raise SettingError("clom.feature", f"must be one of {', '.join(FEATURES)}, got {options.feature!r}")
    if options.distance != "cos" and options.feature != "embed":
        raise SettingError("clom.feature", f"{options.feature!r} applies only to the cos distance")
    if not options.models_pool:
        raise SettingError("clom.models_pool", "is needed: the architectures of the pre-trained pool (e.g. "
                           "ConvNet), with alphas (one per architecture, or one for all)")
    resolve_alphas(options.alphas, list(options.models_pool))
    if options.model_num < 1:
        raise SettingError("clom.model_num", f"must be >= 1, got {options.model_num}")
    if options.batch_size < 0:
        raise SettingError("clom.batch_size", f"must be >= 0 (0 = all real images), got {options.batch_size}")
    if not (math.isfinite(options.cache_gb) and options.cache_gb >= 0):
        raise SettingError("clom.cache_gb", f"must be a number >= 0, got {options.cache_gb}")


def resolve_alphas(alphas: list[float] | None, architectures: list[str]) -> list[float]:
    """One alpha per pool architecture: the given ones, or one given alpha for all."""
    if not alphas:
        raise SettingError("clom.alphas", "are needed: one weight per pool architecture, or one for all "
                           "(e.g. 1000)")
    if not all(math.isfinite(a) for a in alphas):
        raise SettingError("clom.alphas", f"must be finite numbers, got {list(alphas)}")
    if any(a < 0 for a in alphas):  # a negative weight pushes the images away from their own class
        raise SettingError("clom.alphas", f"must be >= 0 (a negative weight pushes each synthetic image away from "
                           f"its own class), got {list(alphas)}")
    if len(alphas) == 1:
        return [float(alphas[0])] * len(architectures)
    if len(alphas) != len(architectures):
        raise SettingError("clom.alphas", f"has {len(alphas)} values but the pool has {len(architectures)} "
                           f"architectures ({' '.join(architectures)}): give one per architecture, or one for all")
    return [float(a) for a in alphas]


class ClomTerm(Protocol):
    """What the distillation loop adds to its loss at every image step."""

    def __call__(self, image_syn: torch.Tensor, label_syn: torch.Tensor) -> torch.Tensor: ...

    def reseed(self, seed: int) -> None: ...

    def describe(self) -> str: ...


@dataclass
class _MemberState:
    """Everything one pool model needs at each step."""

    arch: str
    index: int
    model: nn.Module
    adapter: nn.Module  # target space -> this model's input space
    features: nn.Module | None  # F for cos (embed or logits)
    cache: torch.Tensor | None = None  # (N, d) unit real features, when drawn batches fit the budget
    total_sums: torch.Tensor | None = None  # (C, d) float64 s_c over all real images (full batch)


class ClomLoss:
    """`loss = clom(image_syn, label_syn)`: one CLoM step, alpha included, differentiable in image_syn."""

    def __init__(self, pool: list[PoolArch], alphas: list[float], options: ClomOptions, real: ImageSource,
                 target_space: InputSpace, device, seed: int, feature_batch_size: int = FEATURE_BATCH_SIZE):
        self.pool, self.alphas, self.distance, self.feature = pool, alphas, options.distance, options.feature
        self.real, self.num_classes, self.device = real, real.num_classes, torch.device(device)
        self.source_dataset, self.feature_batch_size = options.source_dataset, feature_batch_size
        self.num_real = len(real)
        self.real_labels = real.labels.to(self.device, torch.long)
        batch_size = options.batch_size
        self.full_batch = batch_size <= 0 or batch_size >= self.num_real  # all real images, exactly
        self.batch_size = self.num_real if self.full_batch else batch_size
        self.real_counts = class_counts(self.real_labels, self.num_classes)
        self._member_gen = make_generator(seed, "cpu")  # which pool model: a CPU draw, no device sync
        self._batch_gen = make_generator(seed + 1, self.device)  # which real images
        self.reseed(seed)
        self.cache_bytes = 0
        self.states = [
            [self._member_state(arch, k, member, target_space) for k, member in enumerate(arch.members)]
            for arch in pool
        ]
        self._fill_caches(int(options.cache_gb * (1 << 30)))

    def _member_state(self, arch: PoolArch, index: int, member, target_space: InputSpace) -> _MemberState:
        features = None
        if self.distance == "cos":
            features = _EmbedOf(member.model) if self.feature == "embed" else member.model
        adapter = make_input_adapter(target_space, member.input_space).to(self.device)
        return _MemberState(arch.architecture, index, member.model, adapter, features)

    def reseed(self, seed: int) -> None:
        """Restart the draws (pool model, real batch) from `seed`, e.g. once per iteration, so that a
        resumed run repeats them exactly."""
        self._member_gen.manual_seed(int(seed))
        self._batch_gen.manual_seed(int(seed) + 1)

    # ---- real features (cos only)
    @torch.no_grad()
    def unit_real_features(self, state: _MemberState, idx: torch.Tensor | None = None) -> torch.Tensor:
        """u_i = F(x_i)/|F(x_i)| for the real images `idx` (None: all), in no-grad chunks."""
        idx = torch.arange(self.num_real, device=self.device) if idx is None else idx
        chunks = [
            state.features(state.adapter(self.real.images(part)))
            for part in idx.split(self.feature_batch_size)
        ]
        return F.normalize(torch.cat(chunks), dim=1)

    def _fill_caches(self, budget: int) -> None:
        if self.distance != "cos":
            return  # ce needs only the class counts of the real batch
        for state in (s for arch_states in self.states for s in arch_states):
            if self.full_batch:  # only s_c is ever needed: (C, d), streamed, no per-image cache
                state.total_sums = sum(
                    class_sums(self.unit_real_features(state, part), self.real_labels[part], self.num_classes)
                    for part in torch.arange(self.num_real, device=self.device).split(
                        self.feature_batch_size * 8
                    )
                )
                continue
            probe = self.unit_real_features(state, torch.zeros(1, dtype=torch.long, device=self.device))
            need = self.num_real * probe.shape[1] * probe.element_size()
            if self.cache_bytes + need <= budget:
                state.cache = self.unit_real_features(state)
                self.cache_bytes += need

    def real_class_sums(self, state: _MemberState, idx: torch.Tensor | None) -> torch.Tensor:
        if idx is None:
            return state.total_sums
        if state.cache is not None:
            return cached_class_sums(state.cache, idx, self.real_labels, self.num_classes)
        return class_sums(self.unit_real_features(state, idx), self.real_labels[idx], self.num_classes)

    def draw_real_batch(self) -> torch.Tensor | None:
        """Indices of this step's real batch, without replacement; None = all real images."""
        if self.full_batch:
            return None
        perm = torch.randperm(self.num_real, generator=self._batch_gen, device=self.device)
        return perm[: self.batch_size]

    # ---- one step
    def __call__(self, image_syn: torch.Tensor, label_syn: torch.Tensor) -> torch.Tensor:
        arch_index, model_index = draw_pool_member(self.pool, self._member_gen)
        state, alpha = self.states[arch_index][model_index], self.alphas[arch_index]
        x = state.adapter(image_syn)
        if self.distance == "ce_plain":
            return alpha * F.cross_entropy(state.model(x), label_syn)
        idx = self.draw_real_batch()
        counts = self.real_counts if idx is None else class_counts(self.real_labels[idx], self.num_classes)
        if self.distance == "ce":
            return alpha * ce_class_sum(state.model(x), label_syn, counts)
        return alpha * cos_class_sum(state.features(x), label_syn, self.real_class_sums(state, idx), counts)

    def describe(self) -> str:
        members = ", ".join(
            f"{arch.architecture} x{len(arch.members)} (alpha {alpha:g})"
            for arch, alpha in zip(self.pool, self.alphas)
        )
        source = f"{self.source_dataset}: " if self.source_dataset else ""
        feature = f" on {self.feature}" if self.distance == "cos" else ""
        batch = (
            f"all {self.num_real} real images"
            if self.full_batch
            else f"{self.batch_size} of {self.num_real} real images per step (no replacement)"
        )
        states = [s for arch_states in self.states for s in arch_states]
        if self.distance != "cos":
            cache = "class counts only"
        elif self.full_batch:
            cache = f"per-class feature sums for {len(states)} model(s)"
        else:
            cached = sum(s.cache is not None for s in states)
            cache = f"{cached}/{len(states)} model(s) cached, {self.cache_bytes / 2**20:.1f} MiB"
            cache += ", others computed per step" if cached < len(states) else ""
        return f"CLoM {self.distance}{feature} | pool {source}{members} | {batch} | real features: {cache}"


class _EmbedOf(nn.Module):
    """F = model.embed, as a callable module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


def build_clom_loss(options: ClomOptions, real: ImageSource, target_space: InputSpace, device,
                    seed: int) -> ClomLoss:
    """Load the pool, check it fits the distance and the target, and prepare the real-side statistics.

    `real`: the target's training images in `target_space` (e.g. a utils.data ImageSet) on `device`.
    """
    check_clom_options(options)
    alphas = resolve_alphas(options.alphas, list(options.models_pool))
    if len(real) == 0:
        raise UserError("CLoM needs real training images, but the data set is empty")
    labels = real.labels
    if int(labels.max()) >= real.num_classes or int(labels.min()) < 0:
        raise UserError(f"real labels must lie in 0..{real.num_classes - 1}")
    pool = load_pool(options.source_dataset, list(options.models_pool), options.model_num, options.epoch, device,
                     options.pool_root, options.weights)
    _check_pool_fits(pool, options.distance, options.feature, real.num_classes)
    return ClomLoss(pool, alphas, options, real, target_space, device, seed)


def _check_pool_fits(pool: list[PoolArch], distance: str, feature: str, target_num_classes: int) -> None:
    for arch in pool:
        if arch.foundation and (distance != "cos" or feature != "embed"):
            raise UserError(
                f"foundation model {arch.architecture} gives embeddings only: use --CLoM_distance cos "
                "(with the default embed features)"
            )
        if distance != "cos" and arch.members[0].num_classes != target_num_classes:
            raise UserError(
                f"--CLoM_distance {distance} needs a pool with the target's classes, but "
                f"{arch.architecture} predicts {arch.members[0].num_classes} classes and the target has "
                f"{target_num_classes}: use --CLoM_distance cos for out-of-distribution pools"
            )
