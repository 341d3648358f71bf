"""Images of a cached split read row by row, so memory stays bounded whatever its size.

A memory map would page the whole file into the process as a stage walks it (and count it
in its resident memory); ``RowFile`` instead reads the rows a batch asks for with ``pread``,
leaving caching to the kernel's page cache. Splits small enough to hold are read into memory
once instead, which is fastest (``open_images``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

# splits up to this many bytes are held in memory; larger ones are read by rows
IN_MEMORY_BYTES = 1 << 30


class RowFile:
    """The uint8 rows ``[N, C, H, W]`` of a ``.npy`` file, read on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4:
            raise ValueError(f"{path}: not a C-ordered uint8 [N, C, H, W] array")
        self.shape = tuple(shape)
        self.row_bytes = int(np.prod(shape[1:]))
        if self.path.stat().st_size < self.offset + self.shape[0] * self.row_bytes:
            raise ValueError(f"{path}: shorter than its header says (truncated)")
        self._fd: int | None = None
        self._pid = -1

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a DataLoader worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> torch.Tensor:
        rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(rows), -1)
        fd = self._file()
        for i, r in enumerate(rows.tolist()):
            if not 0 <= r < self.shape[0]:
                raise IndexError(f"row {r} of {self.shape[0]}")
            data = os.pread(fd, self.row_bytes, self.offset + r * self.row_bytes)
            flat[i] = np.frombuffer(data, dtype=np.uint8)
        return torch.from_numpy(out)

    def __array__(self, dtype=None, copy=None):
        return self[torch.arange(len(self))].numpy()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_pid")}

    def __setstate__(self, state):
        self.__dict__.update(state, _fd=None, _pid=-1)

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


def open_images(path: Path, in_memory_bytes: int | None = None) -> torch.Tensor | RowFile:
    """A cached split's images: a tensor in memory where they fit ``in_memory_bytes`` (default
    ``IN_MEMORY_BYTES``), else a ``RowFile``."""
    rows = RowFile(path)
    limit = IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
    if len(rows) * rows.row_bytes <= limit:
        return torch.from_numpy(np.load(path, allow_pickle=False))
    return rows
