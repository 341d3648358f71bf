"""One writer per output directory: an advisory lock file beside it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from infoutil.errors import UserError


@contextlib.contextmanager
def output_lock(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``<out_dir>.lock`` for the duration; a second run aimed at it stops at once.

    The lock is an ``flock`` on the file, so the kernel releases it when its holder dies:
    a killed run never leaves a stale lock behind. A run that made the lock file and leaves
    no output (a refused or failed start) removes it again.
    """
    out = Path(out_dir)
    lock_path = out.with_name(out.name + ".lock")
    made = not lock_path.exists()
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(
            f"{out}: cannot create the output here ({err.strerror}); choose a writable --out"
        ) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UserError(
                f"{out}: another infoutil run (pid {holder}) is writing here; "
                "wait for it to finish or choose another --out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            left_nothing = not out.exists() and not out.with_name(out.name + ".partial").exists()
            if made and left_nothing:
                lock_path.unlink(missing_ok=True)  # still held: no one else can be using it
    finally:
        os.close(fd)  # closing releases the lock
