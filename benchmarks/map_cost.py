"""Does the map pay? Each crop position's validation score beside its distil cost per candidate.

Reads a study's results (``benchmarks/study.py``: each run's ``results.json`` and the distil's
``run_stats.json``) and the run that computed the shared maps, whose Shapley and utility stages
the factor-2 Shapley rows read from the score cache (their own run_stats count only the
loading). The cost is the stages that choose the patches, in seconds per pool candidate: the
map (Shapley or Grad-CAM), the utility's gradient norms, the selection rule, RDED's scoring,
the baselines' features. The quarter probe (a diagnostic every InfoUtil distil records), the
assembly and the soft labels (per distilled image, alike for every row) are left out. Issue "A
strong teacher at 128 px".

    python benchmarks/map_cost.py --results benchmarks/results/study/imagenette \\
        --maps-stats benchmarks/results/study/imagenette/maps-run_stats.json \\
        --candidates 1000 --suffix ipc10-val-bf16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from study import table  # benchmarks/, beside this script

# the stages that choose patches (everything else is alike across rows or a diagnostic)
CHOOSING = ("shapley", "gradcam", "utility", "selection rule", "rded scoring", "features")
CACHED = 1.0  # a stage under a second over a whole pool was read from the score cache


def cost_per_candidate(stages: dict[str, float], maps: dict[str, float], candidates: int) -> dict:
    """Seconds per candidate of each choosing stage; a cached Shapley or utility stage is
    charged at the maps run's measured cost."""
    cost = {}
    for stage in CHOOSING:
        if stage not in stages:
            continue
        seconds = stages[stage]
        if seconds < CACHED and stage in ("shapley", "utility") and stage in maps:
            seconds = maps[stage]
        cost[stage] = seconds / candidates
    return cost


def rows(results: Path, maps_stats: Path, candidates: int, suffix: str) -> list[dict]:
    """The study's finished runs named ``*-suffix`` (``study.table``), best first."""
    maps = {s["stage"]: s["seconds"] for s in json.loads(maps_stats.read_text())["stages"]}
    out = []
    for r in table(results):  # best first
        if not r["run"].endswith(f"-{suffix}") or not r["stage_seconds"]:
            continue
        cost = cost_per_candidate(r["stage_seconds"], maps, candidates)
        out.append(
            {
                "run": r["run"].removesuffix(f"-{suffix}"),
                "mean": r["mean"],
                "std": r["std"],
                "seconds_per_candidate": sum(cost.values()),
                "stages": cost,
            }
        )
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| run | val top-1 (%) | s / candidate | of which |",
        "|---|---|---|---|",
    ]
    for x in table:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in x["stages"].items())
        lines.append(
            f"| {x['run']} | {100 * x['mean']:.2f} +- {100 * x['std']:.2f} | "
            f"{x['seconds_per_candidate']:.2f} | {parts} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--maps-stats", type=Path, required=True)
    ap.add_argument("--candidates", type=int, required=True, help="the pool's size")
    ap.add_argument("--suffix", default="ipc10-val-bf16", help="the runs' name after the variant")
    args = ap.parse_args()
    print(markdown(rows(args.results, args.maps_stats, args.candidates, args.suffix)))


if __name__ == "__main__":
    main()
