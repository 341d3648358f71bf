"""``infoutil compare``: many ``results.json`` files -> one table (its figures: ``report``)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from infoutil.atomic import atomic_write_bytes
from infoutil.errors import UserError

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


# the label regimes, as the protocols name them, in the order a table shows them
REGIMES = ("hard", "static", "rded")


def _budget(r: dict) -> str:
    if r.get("budget") == "steps":
        return f"{r['steps']} steps"
    return f"{r['epochs']} epochs"


def regime_rows(records: list[dict]) -> list[dict]:
    """One row per set (dataset, student, split, method, recipe, IPC, budget) with its
    accuracy in each label regime, and DD-Ranking's scores where their inputs exist
    (``docs/design.md``, *Scores*): IOR per regime (the gain over random real images of the
    same IPC under the same regime), HLR (the full training set's hard-label accuracy minus
    the set's) and LRS (from IOR under the soft regime and HLR)."""
    table: dict[tuple, dict] = {}
    for r in records:
        key = (r["dataset"], r["student"], r.get("split", "test"), r["method"],
               r.get("recipe") if r["method"].startswith("infoutil") else None,
               r["ipc"], _budget(r))  # fmt: skip
        row = table.setdefault(key, dict(zip(
            ("dataset", "student", "split", "method", "recipe", "ipc", "budget"), key,
            strict=True)))  # fmt: skip
        row[r["protocol"]] = (r["mean"], r["std"], len(r["seeds"]))
    rows = list(table.values())
    for row in rows:
        same = [o for o in rows if (o["dataset"], o["student"], o["split"]) ==
                (row["dataset"], row["student"], row["split"])]  # fmt: skip
        random = next((o for o in same if o["method"] == "random" and o["ipc"] == row["ipc"]
                       and o["budget"] == row["budget"]), None)  # fmt: skip
        full = next((o for o in same if o["method"] == "full" and "hard" in o), None)
        for regime in REGIMES:
            if random is not None and regime in row and regime in random:
                row[f"ior_{regime}"] = row[regime][0] - random[regime][0]
        if full is not None and "hard" in row and row["method"] != "full":
            row["hlr"] = full["hard"][0] - row["hard"][0]
        soft = "rded" if "ior_rded" in row else "static"
        if "hlr" in row and f"ior_{soft}" in row:
            row["lrs"] = label_robust_score(row[f"ior_{soft}"], row["hlr"])
            row["lrs_from"] = soft
    return rows


def label_robust_score(ior: float, hlr: float, weight: float = 0.5) -> float:
    """DD-Ranking's LRS: alpha = w * IOR - (1 - w) * HLR, LRS = (e^alpha - e^-1) / (e - e^-1),
    with IOR and HLR as fractions (DD-Ranking's code passes percentage points, which crushes
    every LRS below about -0.157; docs/design.md)."""
    alpha = weight * ior - (1 - weight) * hlr
    return (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))


def regime_markdown(rows: list[dict]) -> str:
    regimes = [g for g in REGIMES if any(g in r for r in rows)]
    head = ["method", "recipe", "dataset", "IPC", "student", "split", "budget"]
    head += [*(f"{g} (%)" for g in regimes), *(f"IOR {g}" for g in regimes), "HLR", "LRS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["recipe"] or "-", r["dataset"], r["ipc"] or "all", r["student"],
                 r["split"], r["budget"]]  # fmt: skip
        cells += [format_accuracy(*r[g]) if g in r else "-" for g in regimes]
        cells += [f"{100 * r[f'ior_{g}']:+.2f}" if f"ior_{g}" in r else "-" for g in regimes]
        cells += [f"{100 * r['hlr']:.2f}" if "hlr" in r else "-"]
        cells += [f"{r['lrs']:.3f}" if "lrs" in r else "-"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def compare(paths: list[str | Path], out: str | Path) -> list[dict]:
    out = Path(out)
    records = collect_results(paths)
    rows = summary_rows(records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "results.md", markdown_table(rows).encode())
    atomic_write_bytes(out / "regimes.md", regime_markdown(regime_rows(records)).encode())
    return rows
