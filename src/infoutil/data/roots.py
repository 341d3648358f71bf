"""Where datasets are found: the data root (``--data-root`` or ``INFOUTIL_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

from infoutil.errors import UserError


def resolve_data_root(data_root: str | os.PathLike | None) -> Path | None:
    root = data_root if data_root is not None else os.environ.get("INFOUTIL_DATA")
    if root is None:
        return None
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"data root {path} does not exist; pass --data-root or set INFOUTIL_DATA")
    return path


def need_root(root: Path | None, name: str) -> Path:
    if root is None:
        raise UserError(
            f"dataset {name!r} needs a data root: pass --data-root PATH or set INFOUTIL_DATA"
        )
    return root
