"""ImageSet: one split as one tensor resident on the device plus a class-major index, so a class sample
is an index draw with a seeded torch.Generator (no DataLoader, no PIL, no host round trip)."""

from __future__ import annotations

import torch


def _random_keys(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Uniform keys drawn on the generator's own device (torch requires it), then moved to the data."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


class ImageSet:
    """One split, resident on one device.

    Stored either as float32 (already normalized when `normalized`) or, for large sets, as uint8 pixels
    converted per batch; `images()` hides the difference and always returns float32 (n, C, H, W) ready
    for a network. A class-major index is built once, so class samples are gathers, never scans.
    """

    def __init__(
        self,
        data: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        normalized: bool,
    ):
        if data.dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"ImageSet stores float32 or uint8 images, got {data.dtype}")
        self._data = data
        self.labels = labels.to(device=data.device, dtype=torch.long)
        self.num_classes = int(num_classes)
        self.mean = mean.to(device=data.device, dtype=torch.float32)
        self.std = std.to(device=data.device, dtype=torch.float32)
        self.normalized = bool(normalized)
        self._build_class_index()

    def _build_class_index(self) -> None:
        labels, device = self.labels, self.labels.device
        counts = torch.bincount(labels, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        self._counts = counts
        self._count_list = counts.tolist()  # a python copy, so per-class calls never sync with the device
        class_major = torch.argsort(labels, stable=True)  # class 0's indices, then class 1's, ...
        # Padded (num_classes, max_count) index matrix: row c = class c's indices, then filler; `_valid`
        # marks the real entries. It lets sample_per_class draw for every class in one call.
        max_count = max(self._count_list, default=0)
        sorted_labels = labels[class_major]
        position = torch.arange(len(labels), device=device) - starts[sorted_labels]
        self._padded = torch.zeros((self.num_classes, max_count), dtype=torch.long, device=device)
        self._padded[sorted_labels, position] = class_major
        self._valid = torch.arange(max_count, device=device) < counts[:, None]

    # ---- basic facts ----

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self._data.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._data.shape[1:])

    def class_counts(self) -> torch.Tensor:
        return self._counts

    # ---- images ----

    def images(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """float32 (n, C, H, W) ready for a network; `idx` None = all. For float storage and idx None this
        is the stored tensor itself: do not modify it in place."""
        if idx is None:
            return self._as_network_input(self._data)
        return self._as_network_input(self._data[torch.as_tensor(idx, device=self.device)])

    def _as_network_input(self, stored: torch.Tensor) -> torch.Tensor:
        if stored.dtype == torch.float32:
            return stored
        pixels = stored.float().div_(255)
        return self._normalize_in_place(pixels) if self.normalized else pixels

    def _normalize_in_place(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.sub_(self.mean.view(-1, 1, 1)).div_(self.std.view(-1, 1, 1))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0,1] pixel space (identity when not normalized)."""
        if not self.normalized:
            return x
        return x * self.std.view(-1, 1, 1).to(x) + self.mean.view(-1, 1, 1).to(x)

    # ---- sampling ----

    def sample_per_class_indices(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """(num_classes, n') indices, n' = min(n, smallest class count), without replacement within a class.
        One random key per padded slot, filler keyed last, the n' smallest keys per row: a uniform draw
        for every class at once."""
        n_take = max(0, min([n, *self._count_list]))
        if n_take == 0:
            return self._padded[:, :0]
        keys = _random_keys(tuple(self._padded.shape), generator, self.device)
        keys.masked_fill_(~self._valid, 2.0)  # keys are < 1, so filler is never among the smallest
        columns = keys.topk(n_take, dim=1, largest=False).indices
        return self._padded.gather(1, columns)

    def sample_per_class(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """(num_classes, n', C, H, W) images; see sample_per_class_indices."""
        indices = self.sample_per_class_indices(n, generator)
        return self.images(indices.reshape(-1)).view(*indices.shape, *self.image_shape)

    def random_subset_indices(self, per_class: list[int], generator: torch.Generator) -> torch.Tensor:
        """Indices of a uniform random subset with per_class[c] images of class c, without replacement,
        class-major (class 0's, then class 1's, ...): e.g. the random real images a synthetic set of the same
        size per class is compared with."""
        if len(per_class) != self.num_classes:
            raise ValueError(f"per_class has {len(per_class)} entries for {self.num_classes} classes")
        short = [c for c, (want, have) in enumerate(zip(per_class, self._count_list)) if want > have]
        if short:
            c = short[0]
            raise ValueError(f"class {c} has {self._count_list[c]} images, fewer than the {per_class[c]} asked for")
        keys = _random_keys(tuple(self._padded.shape), generator, self.device)
        keys.masked_fill_(~self._valid, 2.0)  # filler last
        shuffled = self._padded.gather(1, keys.argsort(dim=1))
        wanted = torch.as_tensor(per_class, device=self.device)
        take = torch.arange(shuffled.shape[1], device=self.device) < wanted[:, None]
        return shuffled[take]  # row by row: class-major

