"""``infoutil compare``: many ``results.json`` files -> one table and one plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from infoutil.atomic import atomic_write_bytes
from infoutil.errors import UserError
from infoutil.report.plots import plot_accuracy_vs_ipc

COLUMNS = [
    "method",
    "recipe",
    "dataset",
    "ipc",
    "student",
    "protocol",
    "split",
    "label_teacher",
    "epochs",
    "teacher_accuracy",
    "mean",
    "std",
    "seeds",
    "distill_seconds",
]


def format_accuracy(mean: float, std: float, seeds: int) -> str:
    """``58.40 +- 0.21`` in percent; one seed has no spread, so no ``+- 0.00`` either."""
    if seeds < 2:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} +- {100 * std:.2f}"


def collect_results(paths: list[str | Path]) -> list[dict]:
    """Every ``results.json`` at or below the given paths, sorted for a stable table."""
    found: list[dict] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
        files = [p] if p.is_file() else sorted(p.rglob("results.json"))
        for f in files:
            try:
                record = json.loads(f.read_text())
            except json.JSONDecodeError as err:
                raise UserError(f"{f}: not valid JSON ({err})") from err
            if "mean" not in record or "method" not in record:
                raise UserError(f"{f}: not an infoutil results file")
            found.append(dict(record, source=str(f)))
    if not found:
        raise UserError("no results.json found under the given paths")
    return sorted(
        found,
        key=lambda r: (
            r["dataset"],
            r["student"],
            r["method"],
            str(r.get("recipe")),
            r["ipc"] or 0,
            r["protocol"],
            r.get("split", "test"),
            str(_teacher_name(r.get("teacher"))),
            r["epochs"],
        ),
    )


def summary_rows(records: list[dict]) -> list[dict]:
    return [
        {
            "method": r["method"],
            "dataset": r["dataset"],
            "ipc": r["ipc"],
            "student": r["student"],
            "protocol": r["protocol"],
            "recipe": r.get("recipe"),
            # results written before the split existed measured the test set
            "split": r.get("split", "test"),
            "label_teacher": _teacher_name(r.get("teacher")),
            "epochs": r["epochs"],
            "teacher_accuracy": r.get("teacher_accuracy"),
            "mean": r["mean"],
            "std": r["std"],
            "seeds": len(r["seeds"]),
            "distill_seconds": r.get("distill_seconds"),
        }
        for r in records
    ]


def _teacher_name(described: dict | None) -> str | None:
    """``DIR@EPOCH`` for the teacher that labelled (relabelled) a result."""
    if not described:
        return None
    path = Path(described["path"])
    return f"{path.parent.name}@{described['epoch']}"


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| method | recipe | dataset | IPC | student | protocol | split | label teacher | "
        "epochs | teacher acc. | top-1 (%) mean +- std | seeds | distill time (s) |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        teacher = "-" if r["teacher_accuracy"] is None else f"{100 * r['teacher_accuracy']:.1f}"
        dist = "-" if r["distill_seconds"] is None else f"{r['distill_seconds']:.1f}"
        # a recipe presets InfoUtil's own choices; the other methods have none
        recipe = r.get("recipe") if r["method"].startswith("infoutil") else None
        ipc = r["ipc"] if r["ipc"] is not None else "all"
        lines.append(
            f"| {r['method']} | {recipe or '-'} | {r['dataset']} | {ipc} | "
            f"{r['student']} | {r['protocol']} | {r.get('split', 'test')} | "
            f"{r.get('label_teacher') or '-'} | {r['epochs']} | {teacher} | "
            f"{format_accuracy(r['mean'], r['std'], r['seeds'])} | {r['seeds']} | {dist} |"
        )
    return "\n".join(lines) + "\n"


def compare(paths: list[str | Path], out: str | Path) -> list[dict]:
    out = Path(out)
    rows = summary_rows(collect_results(paths))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "results.md", markdown_table(rows).encode())
    for dataset in sorted({r["dataset"] for r in rows}):
        for student in sorted({r["student"] for r in rows if r["dataset"] == dataset}):
            subset = [
                r
                for r in rows
                if r["dataset"] == dataset and r["student"] == student and r["ipc"] is not None
            ]
            if subset:
                name = f"accuracy_vs_ipc_{dataset}_{student}.png".replace(":", "_").replace(
                    "/", "_"
                )
                plot_accuracy_vs_ipc(subset, out / name, f"{dataset}, student {student}")
    return rows
