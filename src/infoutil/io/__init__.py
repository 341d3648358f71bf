"""Files on disk: atomic writes (``io.atomic``), locks (``io.lock``), teacher checkpoints
(``io.checkpoint``) and distilled sets (``io.distilled``).

``infoutil.io.load_distilled`` and ``infoutil.io.load_teacher`` are resolved when first used,
not at import: the first stage (data) imports ``io.atomic``, and the checkpoint module needs the
model registry, which needs data, so importing it here made a cycle.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DistilledSet": "infoutil.io.distilled",
    "load_distilled": "infoutil.io.distilled",
    "Teacher": "infoutil.io.checkpoint",
    "load_teacher": "infoutil.io.checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'infoutil.io' has no attribute {name!r}")
