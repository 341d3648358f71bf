"""Seeds, progress bars and stage timers shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (the same on every machine, rank and run)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def progress(
    iterable=None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    **kw,
):
    """A tqdm bar, silent on ranks other than 0 and when ``enabled`` is false."""
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=False,
        disable=not (enabled and is_main_process()),
        dynamic_ncols=True,
        **kw,
    )


class StageTimer:
    """Wall time and teacher forward passes per stage, for the end-of-run summary."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.forwards: dict[str, int] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def count(self, name: str, forwards: int) -> None:
        self.forwards[name] = self.forwards.get(name, 0) + int(forwards)

    def summary(self, images: int | None = None) -> str:
        parts = [f"{k} {v:.1f}s" for k, v in self.seconds.items()]
        total_fw = sum(self.forwards.values())
        total_s = sum(self.seconds.values())
        line = " | ".join(parts) + f" | teacher forwards {total_fw:,}"
        if total_s > 0:
            line += f" ({total_fw / total_s:,.0f}/s)"
        if images:
            line += f" | {images / max(total_s, 1e-9):.1f} candidate images/s"
        return line

    def to_dict(self) -> dict:
        """Stages in the order they ran (a list: JSON objects are written with sorted keys)."""
        return {
            "stages": [
                {"stage": k, "seconds": round(v, 3), "teacher_forwards": self.forwards.get(k, 0)}
                for k, v in self.seconds.items()
            ]
        }


def peak_rss_mib() -> float | None:
    """This process's peak resident memory so far (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # macOS: bytes


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL at the N-th pass through point ``name``.

    Set ``INFOUTIL_KILL_AT=name:N`` (N defaults to 1). The reliability tests use it to stop a
    real run at a precise point (mid-scoring, mid-write) and check that ``--resume`` finishes
    it byte-identically. ``INFOUTIL_PAUSE_AT=name:FILE`` holds the run there instead (see
    :func:`_pause_point`). Without the variables this is two dictionary lookups.
    """
    pause = os.environ.get("INFOUTIL_PAUSE_AT")
    if pause:
        _pause_point(name, pause)
    spec = os.environ.get("INFOUTIL_KILL_AT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _FAULT_HITS[name] = _FAULT_HITS.get(name, 0) + 1
    if _FAULT_HITS[name] >= int(count or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_FAULT_HITS: dict[str, int] = {}


def _pause_point(name: str, spec: str) -> None:
    """``INFOUTIL_PAUSE_AT=name:FILE``: at the first pass through ``name``, create FILE and
    wait until it is removed. A test uses it to hold a run at a known point (holding its lock,
    say) for as long as it needs, whatever the machine's speed."""
    from pathlib import Path

    target, _, marker = spec.partition(":")
    if target != name or _FAULT_HITS.get(f"pause:{name}"):
        return
    _FAULT_HITS[f"pause:{name}"] = 1
    flag = Path(marker)
    flag.write_text(str(os.getpid()))
    while flag.exists():
        time.sleep(0.05)


def warn(message: str) -> None:
    """A one-line warning on stderr (rank 0 only)."""
    if is_main_process():
        import sys

        print(f"warning: {message}", file=sys.stderr, flush=True)


def resolve_device(name: str | None = None) -> torch.device:
    """``auto`` (the default): the local GPU when there is one, else the CPU."""
    name = name or "auto"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        from infoutil.errors import UserError

        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        from infoutil.errors import UserError

        raise UserError("--device cuda was asked for but no GPU is available; use --device cpu")
    return device


class _RefusingCompiled(torch.nn.Module):
    """A compiled module whose first call turns a compiler failure into one line."""

    def __init__(self, compiled: torch.nn.Module, what: str):
        super().__init__()
        self.compiled, self.what, self.built = compiled, what, False

    def forward(self, *args, **kwargs):
        if self.built:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as err:  # inductor raises many kinds; all mean "cannot compile here"
            from infoutil.errors import UserError

            lines = str(err).strip().splitlines() or [type(err).__name__]
            raise UserError(
                f"compile: torch.compile cannot build {self.what} here ({lines[0][:160]}); "
                "install a C++ compiler or leave compile off"
            ) from err
        self.built = True
        return out


def compiled_or_refused(model: torch.nn.Module, what: str) -> torch.nn.Module:
    """``model`` through ``torch.compile``; built at its first call, where a machine that
    cannot compile is refused in one line (seconds after the start, before the long work)."""
    return _RefusingCompiled(torch.compile(model), what)


def precision_autocast(precision: str, device_type: str = "cpu"):
    """bf16 autocast on ``device_type`` for ``precision == "bf16"``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class RunContext:
    """Where a run reads and writes and what it runs on, carried as one value from the command
    line (or a benchmark) to every stage: the data root (None: ``INFOUTIL_DATA``), the cache
    (None: ``INFOUTIL_CACHE`` or ``~/.cache/infoutil``), the device (None: a GPU if there is
    one), torch's CPU threads (None: torch's default) and whether to show progress bars."""

    data_root: str | None = None
    cache_dir: str | None = None
    device: str | None = None
    threads: int | None = None
    progress: bool = True

    def apply_threads(self) -> None:
        """Set torch's CPU threads, where the context names a count."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    @property
    def compute(self) -> torch.device:
        return resolve_device(self.device)


def available_memory() -> int | None:
    """The memory the kernel says a new allocation can take (``MemAvailable``), in bytes;
    None where it does not say (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(parts: dict[str, float], what: str, hint: str) -> None:
    """Refuse, in one line with the estimate, a run whose memory ``parts`` (bytes) would not
    fit in the memory available, before it starts rather than when the kernel kills it."""
    free = available_memory()
    need = sum(parts.values())
    if free is None or need <= 0.9 * free:
        return
    from infoutil.errors import UserError

    largest = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
    detail = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in largest)
    raise UserError(
        f"{what} needs about {need / 2**30:.1f} GiB ({detail} GiB) but {free / 2**30:.1f} GiB "
        f"is available; {hint}"
    )
