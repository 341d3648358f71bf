"""distil -> evaluate -> collect, written once: the demo, the grids and the studies call it.

A ``Cell`` is one row of a table: a distil config, its teachers, and how its students are
trained and measured. ``run_cell`` finishes what is not finished (a killed cell continues its
partial outputs, and finished ones are reused), then collects the row's record.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from infoutil.atomic import atomic_write_json
from infoutil.config import DistillConfig, ProtocolConfig
from infoutil.evaluation.run import evaluate
from infoutil.io.outputs import COMPLETE
from infoutil.methods import distill
from infoutil.report.plots import plot_results_curves
from infoutil.runtime import RunContext


@dataclass(frozen=True)
class Cell:
    """One row: ``work/distilled/<name>`` measured as ``work/eval/<evaluation>``."""

    name: str
    config: DistillConfig
    teacher: str | Path
    label_teacher: str | Path | None = None
    student: str = "convnet3"
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    seeds: int = 1
    split: str = "test"
    evaluation: str | None = None  # default: "<name>-<student>"
    students_from: Path | None = None  # another evaluation whose kept students are reused
    # what the collected record says in place of the set's own method, and any extra fields
    label: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def eval_name(self) -> str:
        return self.evaluation or f"{self.name}-{self.student}"


def run_cell(cell: Cell, work: str | Path, run: RunContext | None = None,
             results: str | Path | None = None) -> dict:  # fmt: skip
    """Distil unless done, evaluate unless done, and return the row's record; with
    ``results``, also write it to ``results/<evaluation>/`` with the distil's diagnostics and
    cost per stage, and the students' curves as a picture."""
    work, run = Path(work), run or RunContext()
    distilled = work / "distilled" / cell.name
    if not (distilled / COMPLETE).is_file():
        distill(
            cell.config, cell.teacher, distilled, label_teacher=cell.label_teacher, run=run,
            resume=True,
        )  # fmt: skip
    out = work / "eval" / cell.eval_name
    if not (out / COMPLETE).is_file():
        evaluate(
            distilled, out, student=cell.student, protocol=cell.protocol,
            seeds=list(range(cell.seeds)), run=run, resume=True, split=cell.split,
            students_from=cell.students_from,
        )  # fmt: skip
    record = json.loads((out / "results.json").read_text())
    if cell.label is not None:
        record["method"] = cell.label
    record.update(cell.extra)
    if results is not None:
        collect(record, distilled, Path(results) / cell.eval_name)
    return record


def collect(record: dict, distilled: Path, dest: Path) -> None:
    """A row's files in a results folder: ``results.json``, the distil's ``diagnostics.json``
    and ``run_stats.json``, and ``curve.png``."""
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dest / "results.json", record)
    manifest = json.loads((distilled / "manifest.json").read_text())
    if "diagnostics" in manifest:
        atomic_write_json(dest / "diagnostics.json", manifest["diagnostics"])
    if (distilled / "run_stats.json").is_file():
        shutil.copy(distilled / "run_stats.json", dest / "run_stats.json")
    plot_results_curves(record, dest / "curve.png")
