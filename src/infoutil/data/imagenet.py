"""ImageNet's class list, the one source of truth for wnids and their names.

``assets/imagenet1k_classes.tsv`` holds ImageNet-1K's (wnid, name) pairs in torchvision's index
order. The fast.ai subsets, the report's class names and imported 1,000-class teachers all read
it from here.
"""

from __future__ import annotations

import functools
from pathlib import Path

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASS_LIST = Path(__file__).resolve().parent.parent / "assets" / "imagenet1k_classes.tsv"


@functools.cache
def imagenet1k_classes() -> tuple[tuple[str, str], ...]:
    """ImageNet-1K's (wnid, name) pairs in torchvision's index order."""
    rows = CLASS_LIST.read_text().splitlines()
    return tuple(tuple(r.split("\t", 1)) for r in rows)  # type: ignore[misc]


@functools.cache
def wnid_names() -> dict[str, str]:
    """wnid -> ImageNet's name for it."""
    return dict(imagenet1k_classes())


def names_of(wnids: tuple[str, ...]) -> dict[str, str]:
    """ImageNet's names of ``wnids``, in the order given."""
    table = wnid_names()
    return {w: table[w] for w in wnids}


def display_name(class_name: str) -> str:
    """A class as a person reads it: ImageNet's name for a known wnid, else the name itself."""
    return wnid_names().get(class_name, class_name)
