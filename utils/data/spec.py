"""What a data set is to the rest of the suite: name, shape, classes, normalization, where its files come from.

Its own module, so that the readers (one per on-disk format) and the table that lists them can both import it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channel: int
    im_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]  # Digits: computed from its train split
    expected_files: str  # human text for error messages
    downloadable: bool  # torchvision can download it
