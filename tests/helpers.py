"""Helpers for tests that drive the command line in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

# A small but real infoutil distillation: 14 candidates per class, 3 chunks of scores. The
# paper's recipe, so that the Shapley stage (and its fault points) runs.
SMALL_DISTILL = [
    "distill",
    "--method",
    "infoutil",
    "--recipe",
    "paper",
    "--dataset",
    "fashion-mnist",
    "--ipc",
    "2",
    "--candidates-per-class",
    "14",
    "--budget",
    "32",
    "--threads",
    "1",
    "-q",
]


def fmnist_distill(teacher, *args: str) -> list[str]:
    """``distill --dataset fashion-mnist --teacher T`` followed by ``args``."""
    return ["distill", "--dataset", "fashion-mnist", "--teacher", str(teacher), *args]


def run_cli(*args: str, env: dict | None = None, timeout: int = 600):
    """Run ``python -m infoutil ...`` in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "infoutil", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def small_config(method: str = "infoutil", **options):
    """A DistillConfig for a quick real Fashion-MNIST run: IPC 2, 6 candidates per class, the
    paper's recipe unless ``recipe`` says otherwise (so that every stage runs)."""
    from infoutil.config import DistillConfig

    values = {
        "recipe": "paper",
        "method": method,
        "dataset": "fashion-mnist",
        "ipc": 2,
        "candidates_per_class": 6,
        "informativeness": {"budget": 32},
    }
    return DistillConfig(**{**values, **options})


def quiet(data_root, **options):
    """The run context of a test: the shared data root, no progress bars."""
    from infoutil.runtime import RunContext

    return RunContext(data_root=str(data_root), progress=False, **options)
