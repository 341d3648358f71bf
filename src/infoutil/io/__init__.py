"""Files on disk: locks (``io.lock``), an output's life (``io.outputs``), teacher checkpoints
(``io.checkpoint``) and distilled sets (``io.distilled``). Atomic writes sit below every
stage, in ``infoutil.atomic``.

``infoutil.io.load_distilled`` and ``infoutil.io.load_teacher`` are resolved when first used,
not at import: the checkpoint module needs the model registry, which needs data.
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
