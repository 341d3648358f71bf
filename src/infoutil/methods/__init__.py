"""Distillation methods by name, and :func:`distill`, the stage-by-stage driver.

dataset -> candidates -> scores (method-specific, chunked, cached) -> selection ->
assembly -> soft labels -> distilled set on disk.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from infoutil import distributed
from infoutil.config import DistillConfig
from infoutil.data import resolve_cache_dir
from infoutil.data.roots import resolve_data_root
from infoutil.data.sources import dataset_info, load_split_of
from infoutil.errors import UserError
from infoutil.io.checkpoint import Teacher, check_teacher_fits, load_teacher
from infoutil.io.distilled import DISTILLED_FORMAT, write_distilled_files
from infoutil.io.outputs import COMPLETE, finish_output, open_output
from infoutil.methods import baselines, infoutil, rded
from infoutil.methods.common import (
    MethodContext,
    Selection,
    assemble,
    crop_batch,
    soft_labels,
)
from infoutil.runtime import RunContext, StageTimer, peak_rss_mib, warn
from infoutil.selection.diagnostics import selection_diagnostics, summary_line
from infoutil.selection.diagnostics import warning as diagnostics_warning

METHODS: dict[str, Callable[[MethodContext], Selection]] = {
    "infoutil": infoutil.select,
    "rded": rded.select,
    "random": baselines.select_random,
    "herding": baselines.select_herding,
    "kcenter": baselines.select_kcenter,
}
ALL_METHODS = (*METHODS, "full")


def distill(
    cfg: DistillConfig,
    teacher: str | Path,
    out: str | Path,
    *,
    label_teacher: str | Path | None = None,
    run: RunContext | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Distill ``cfg.dataset`` with ``cfg.method`` and write the set to ``out``.

    Under torchrun every rank scores its share of the candidates and rank 0 writes ``out``.
    """
    out, run = Path(out), run or RunContext()
    if cfg.method not in ALL_METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose one of {', '.join(ALL_METHODS)}")
    ctx = distributed.context()
    start = time.perf_counter()
    # teachers are checked against the dataset's shape before any image is decoded
    expected = dataset_info(cfg.dataset, run.data_root, cfg.image_size, run.cache_dir)
    judge = load_teacher(teacher, expect=expected)
    labeller = judge if label_teacher is None else load_teacher(label_teacher, expect=expected)
    train = load_split_of(cfg, "train", run.data_root, run.cache_dir)
    check_teacher_fits(judge.info, train.info, str(judge.path))
    check_teacher_fits(labeller.info, train.info, str(labeller.path))
    compute = run.compute
    judge.model.to(compute)
    labeller.model.to(compute)
    store_root = resolve_cache_dir(run.cache_dir) / "scores"
    timer = StageTimer()

    stage = None
    with contextlib.ExitStack() as stack:
        try:
            config = _run_config(cfg, teacher, label_teacher)
            inputs = (teacher, label_teacher, resolve_data_root(run.data_root), store_root.parent)
            stage = open_output(stack, ctx, out, resume=resume, overwrite=overwrite,
                                config=config, inputs=inputs, progress=run.progress)  # fmt: skip
            if stage is None:  # --resume of a finished set
                return out
            mc = MethodContext(cfg, train, judge, store_root, timer, ctx, run.progress, compute)
            selection = None if cfg.method == "full" else METHODS[cfg.method](mc)
            if ctx.is_main:
                _write(stage, out, cfg, train, judge, labeller, selection, timer, start)
        except BaseException:
            # Scores are kept in the store; a half-written output is not left behind (a
            # finished one that could not be moved into place is kept, and the error says so)
            unfinished = stage is not None and not (stage / COMPLETE).is_file()
            if ctx.is_main and unfinished and stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
            raise
    ctx.barrier()
    return out


def _run_config(cfg: DistillConfig, teacher, label_teacher) -> dict:
    return {
        "command": "distill",
        "config": cfg.model_dump(),
        "teacher": str(teacher),
        "label_teacher": None if label_teacher is None else str(label_teacher),
    }


def _write(
    stage: Path,
    out: Path,
    cfg: DistillConfig,
    train,
    judge: Teacher,
    labeller: Teacher,
    selection: Selection | None,
    timer: StageTimer,
    start: float,
) -> None:
    info = train.info
    manifest = {
        "format": DISTILLED_FORMAT,
        "method": cfg.method,
        "ipc": cfg.ipc,
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "dataset": info.to_dict(),
        "teacher": judge.describe(),
        "label_teacher": labeller.describe(),
        # the held-out split no image here comes from (None: the whole training set was used)
        "validation": train.validation,
        "images": [],
    }
    if train.validation is not None:
        manifest["teachers_saw_validation"] = {
            role: t.meta.get("validation") != train.validation
            for role, t in (("teacher", judge), ("label_teacher", labeller))
        }
    if selection is None:  # the full training set, relabelled online by the teacher
        manifest.update(full_training_set=True, ipc=None, factor=1, num_images=len(train))
        with timer.stage("write"):
            write_distilled_files(
                stage,
                info,
                torch.empty((0, info.channels, 1, 1), dtype=torch.uint8),
                torch.empty(0, dtype=torch.int64),
                None,
                manifest,
                {},
                _stats(timer, start),
            )
            finish_output(stage, out)
        return
    with timer.stage("assemble"):
        images, labels, entries = assemble(train, selection, cfg.ipc)
    with timer.stage("soft labels"):
        logits = soft_labels(labeller, images, selection.factor, crop_batch(cfg, info))
    timer.count("soft labels", logits.shape[0] * logits.shape[1])
    diagnostics = selection_diagnostics(
        selection.selected_scored, selection.pool_scored, info.class_names, info.image_size,
        quarter_probe=selection.quarter_probe,
    )  # fmt: skip
    manifest.update(
        factor=selection.factor,
        stitch=selection.stitch,
        layout=selection.layout,
        num_images=len(images),
        diagnostics=diagnostics,
        images=entries,
    )
    with timer.stage("write"):
        stats = dict(_stats(timer, start), diagnostics=diagnostics)
        write_distilled_files(
            stage, info, images, labels, logits, manifest, selection.scores, stats
        )
        finish_output(stage, out)
    n_candidates = len(selection.scores.get("candidates", []))
    print(
        f"distilled {cfg.method} {info.name} ipc={cfg.ipc} -> {out} | "
        + timer.summary(n_candidates or None)
        + f" | peak RSS {stats['peak_rss_mib']} MiB\n  "
        + summary_line(diagnostics),
        flush=True,
    )
    rule = cfg.utility.select if cfg.method == "infoutil" else None
    problem = diagnostics_warning(diagnostics, judge.meta.get("test_accuracy"), rule)
    if problem:
        warn(problem)


def _stats(timer: StageTimer, start: float) -> dict:
    d = timer.to_dict()
    d["total_seconds"] = round(time.perf_counter() - start, 3)
    d["peak_rss_mib"] = peak_rss_mib()
    return d
