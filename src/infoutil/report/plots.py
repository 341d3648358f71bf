"""Figures as PNG files (matplotlib, imported lazily, headless Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from infoutil.atomic import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """PNG without a timestamp or software tag, so the same data gives the same bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_training_curves(runs: list[dict], path: Path, title: str) -> None:
    """Test accuracy (marked points) and training loss per epoch, one colour per seed."""
    plt = _plt()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.4))
    for run in runs:
        curve = run["curve"]
        pts = [
            (p["epoch"], 100 * p.get("test_accuracy", p.get("probe_accuracy")))
            for p in curve
            if "test_accuracy" in p or "probe_accuracy" in p
        ]
        (line,) = ax_acc.plot(*zip(*pts, strict=True), marker="o", label=f"seed {run['seed']}")
        last = curve[-1]
        if "test_accuracy" in last:
            ax_acc.plot(
                [last["epoch"]],
                [100 * last["test_accuracy"]],
                marker="*",
                markersize=12,
                color=line.get_color(),
            )
        ax_loss.plot(
            [p["epoch"] for p in curve],
            [p["train_loss"] for p in curve],
            label=f"seed {run['seed']}",
        )
    ax_acc.set(
        xlabel="epoch", ylabel="test top-1 (%)", title="top-1: o probe, * full test (reported)"
    )
    ax_loss.set(xlabel="epoch", ylabel="KD loss", title="training loss")
    ax_acc.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.35)
    save_figure(fig, path)


def plot_results_curves(results: dict, path: Path) -> None:
    """An evaluation's ``results.json`` as its training curves, one colour per seed."""
    title = (
        f"{results['method']} {results['dataset']} ipc={results['ipc']} -> {results['student']}"
        f" ({results['protocol']}, {results['epochs']} epochs)"
    )
    plot_training_curves(results["curves"], path, title)


def plot_compare(rows: list[dict], out: Path) -> list[Path]:
    """One accuracy-against-IPC figure per dataset and student of a compare table."""
    written = []
    for dataset in sorted({r["dataset"] for r in rows}):
        for student in sorted({r["student"] for r in rows if r["dataset"] == dataset}):
            subset = [
                r
                for r in rows
                if r["dataset"] == dataset and r["student"] == student and r["ipc"] is not None
            ]
            if subset:
                name = f"accuracy_vs_ipc_{dataset}_{student}.png"
                path = out / name.replace(":", "_").replace("/", "_")
                plot_accuracy_vs_ipc(subset, path, f"{dataset}, student {student}")
                written.append(path)
    return written


def series_name(row: dict, varying: set[str]) -> str:
    """A line's name: the method, plus InfoUtil's recipe, plus the split and label teacher
    where the rows differ in them (so different runs never share a line)."""
    name = row["method"]
    if row.get("recipe") and row["method"].startswith("infoutil"):
        name += f" ({row['recipe']})"
    for key in ("split", "label_teacher"):
        if key in varying:
            name += f", {key.replace('_', ' ')} {row.get(key)}"
    return name


def plot_accuracy_vs_ipc(rows: list[dict], path: Path, title: str) -> None:
    """Mean +- std test accuracy against IPC, one line per method (and recipe, split, label
    teacher where they vary)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    varying = {k for k in ("split", "label_teacher") if len({r.get(k) for r in rows}) > 1}
    methods = sorted({series_name(r, varying) for r in rows})
    for m in methods:
        pts = sorted(
            (r["ipc"], r["mean"], r["std"])
            for r in rows
            if series_name(r, varying) == m and r["ipc"] is not None
        )
        if not pts:
            continue
        ipc, mean, std = zip(*pts, strict=True)
        ax.errorbar(
            ipc,
            [100 * v for v in mean],
            yerr=[100 * v for v in std],
            marker="o",
            capsize=3,
            label=m,
        )
    ax.set_xscale("log")
    ax.set(xlabel="images per class", ylabel="test top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> one uint8 ``[C, H', W']`` grid, ``nrow`` images per row."""
    n, c, h, w = images.shape
    rows = max(1, -(-n // nrow))
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid
