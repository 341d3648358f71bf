"""Selection diagnostics side by side: what the judge teacher thinks of each set's patches.

Reads the ``diagnostics.json`` that ``benchmarks/study.py`` copies beside each result (the
same record as the distilled set's manifest) and prints a markdown table: per run, the
selected patches against the candidate pool, and the classes the teacher predicts.

    python benchmarks/diagnostics_table.py benchmarks/results/study/cifar10 \
        --runs paper-ipc10-val rded-ipc10-val random-ipc10-val
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from infoutil.selection.diagnostics import most_predicted


def row(name: str, diag: dict) -> str:
    sel, pool = diag["selected"]["overall"], diag["pool"]["overall"]
    names = diag["class_names"]
    top, share = most_predicted(diag)
    noise = "-" if "noise_free_share" not in sel else f"{100 * sel['noise_free_share']:.0f}%"
    worst = min(names, key=lambda n: diag["selected"]["per_class"][n]["teacher_top1"])
    worst_top1 = diag["selected"]["per_class"][worst]["teacher_top1"]
    return (
        f"| {name} | {100 * sel['teacher_top1']:.1f}% ({100 * pool['teacher_top1']:.1f}%) | "
        f"{sel['mean_true_class_prob']:.2f} ({pool['mean_true_class_prob']:.2f}) | "
        f"{top} {100 * share:.0f}% | {worst} {100 * worst_top1:.0f}% | "
        f"{sel['distinct_sources']} / {sel['patches']} | {noise} | "
        f"{100 * sel['mean_area']:.0f}% ({100 * pool['mean_area']:.0f}%) |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path, help="a folder of runs, each with diagnostics.json")
    ap.add_argument("--runs", nargs="+", required=True)
    args = ap.parse_args()
    print(
        "| set | teacher top-1 on selected (pool) | true-class prob (pool) | most predicted "
        "class | worst class top-1 | sources / patches | noise-free | area (pool) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.runs:
        diag = json.loads((args.results / name / "diagnostics.json").read_text())
        print(row(name, diag))


if __name__ == "__main__":
    main()
