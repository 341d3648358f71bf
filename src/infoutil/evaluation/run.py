"""``infoutil evaluate``: students on a distilled set, one per seed, and ``results.json``.

``results.json`` has a stable schema (``RESULTS_FORMAT``) that other tools can read:
method, recipe, dataset, ipc, student, protocol, epochs, split (``test`` or ``val``: what was
measured), teacher_accuracy, the teachers (``teacher`` relabels online, ``distill_teacher``
selected, ``label_teacher`` stored the logits), seeds, accuracy (one per seed, each the LAST
epoch's top-1, never the best), mean, std (population, ddof 0), distill_seconds,
evaluate_seconds, and the full config.

Each trained student's weights stay in the output (``seed_N_student.safetensors``), keyed by
what decided its training: the set's bytes, the student, the relabelling teacher and the
protocol's training fields. ``students_from`` measures those students on another split instead
of training them again: the students that chose a recipe on ``val`` give its ``test`` row, and
only missing seeds train.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from infoutil import distributed
from infoutil.atomic import atomic_save_tensors, atomic_write_json
from infoutil.config import ProtocolConfig
from infoutil.data import (
    ImageDataset,
    ValidationSplit,
    load_dataset,
    per_class_sample,
    resolve_cache_dir,
    resolve_data_root,
    subset,
)
from infoutil.errors import UserError
from infoutil.evaluation.compare import format_accuracy
from infoutil.evaluation.student import (
    STUDENT_LR,
    StudentRun,
    batch_size,
    student_epochs,
    student_steps,
    train_student,
)
from infoutil.io.checkpoint import check_teacher_fits, load_teacher
from infoutil.io.distilled import load_distilled
from infoutil.io.outputs import COMPLETE, finish_output, open_output
from infoutil.models import activation_bytes, create_model, inference_batch
from infoutil.runtime import RunContext, check_fits, fault_point

RESULTS_FORMAT = "infoutil-results/1"
STUDENT_FORMAT = "infoutil-student/1"
# protocol fields that only change what is measured, not how a student trains
MEASURE_ONLY = ("eval_points", "probe_images", "test_per_class", "eval_batch_size")
# fields added after students were kept: in a student's key only where set, so that the
# students kept before them stay reusable (lr_grid only chooses the lr, which is keyed)
KEYED_WHEN_SET = {"steps": None, "precision": "fp32"}


def seed_record(folder: Path, seed: int) -> Path:
    """A finished seed's accuracy and curve."""
    return Path(folder) / f"seed_{seed}.json"


def student_file(folder: Path, seed: int) -> Path:
    return Path(folder) / f"seed_{seed}_student.safetensors"


def training_key(distilled_dir: Path, student: str, teacher: str, protocol: ProtocolConfig) -> str:
    """What decides a student's weights for a given seed: the distilled set's bytes (its
    COMPLETE.json lists every file's sha256), the student, the teacher that relabels online and
    the protocol's training fields. Not the split it is measured on."""
    fields = {
        k: v
        for k, v in protocol.model_dump().items()
        if k not in (*MEASURE_ONLY, "lr_grid", "lr_grid_extend")
        and not (k in KEYED_WHEN_SET and v == KEYED_WHEN_SET[k])
    }
    record = {
        "set": hashlib.sha256((Path(distilled_dir) / COMPLETE).read_bytes()).hexdigest(),
        "student": student,
        "teacher": str(teacher),
        "protocol": fields,
    }
    return json.dumps(record, sort_keys=True)


def save_student(path: Path, model: torch.nn.Module, seed: int, key: str) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one metadata entry: safetensors writes several in no fixed order, and the bytes must repeat
    meta = {"student": json.dumps({"format": STUDENT_FORMAT, "seed": seed, "training": key})}
    atomic_save_tensors(path, tensors, meta)


def load_student(path: Path, key: str, model: torch.nn.Module) -> bool:
    """Load a kept student into ``model`` if it was trained as ``key`` says; False otherwise
    (then it is trained here)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("student", "{}"))
        if meta.get("format") != STUDENT_FORMAT or meta.get("training") != key:
            return False
        model.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise UserError(f"{path}: unreadable kept student ({err}); move it away") from err
    return True


def evaluate(
    distilled_dir: str | Path,
    out: str | Path,
    *,
    student: str = "convnet3",
    teacher: str | Path | None = None,
    protocol: ProtocolConfig | None = None,
    seeds: list[int] | None = None,
    run: RunContext | None = None,
    resume: bool = False,
    overwrite: bool = False,
    split: str = "test",
    students_from: str | Path | None = None,
) -> dict:
    """Train ``len(seeds)`` students on the distilled set; returns the results record.

    ``split`` is what the students are measured on: ``test`` (the real test set, the reported
    figure) or ``val`` (the validation split held out when the set was distilled).
    ``students_from``: another evaluation's output; a seed whose student it kept, trained the
    same way on the same set, is measured here rather than trained again.
    """
    start = time.perf_counter()
    out, run = Path(out), run or RunContext()
    protocol = protocol or ProtocolConfig()
    seeds = list(seeds if seeds is not None else [0])
    _check_request(seeds, split, students_from)
    distilled, test = _set_and_split(Path(distilled_dir), split, protocol, run)
    teacher_spec = teacher or distilled.manifest["label_teacher"]["path"]
    relabeller = load_teacher(teacher_spec, expect=distilled.info)
    relabeller.model.to(run.compute)
    check_teacher_fits(relabeller.info, distilled.info, str(teacher_spec))
    _check_memory(distilled, test, relabeller, student, protocol, run)
    key = training_key(Path(distilled_dir), student, teacher_spec, protocol)
    config = {
        "command": "evaluate",
        "distilled": str(distilled_dir),
        "student": student,
        "teacher": str(teacher_spec),
        "protocol": protocol.model_dump(),
        "seeds": seeds,
        "split": split,
    }
    if students_from is not None:  # only then: runs begun before the option resume as they were
        config["students_from"] = str(students_from)
    ctx = distributed.context()
    lr_choice = None
    with contextlib.ExitStack() as stack:
        inputs = (distilled_dir, teacher_spec, students_from, resolve_data_root(run.data_root))
        inputs = (*inputs, resolve_cache_dir(run.cache_dir))
        stage = open_output(stack, ctx, out, resume=resume, overwrite=overwrite, config=config,
                            inputs=inputs, progress=run.progress)  # fmt: skip
        if stage is None:  # --resume of a finished evaluation: its results
            return json.loads((out / "results.json").read_text())
        if protocol.labels == "hard" and protocol.lr is None:
            args = (distilled, Path(distilled_dir), relabeller, student, teacher_spec)
            protocol, lr_choice, chosen = _choose_lr(*args, protocol, stage, run, ctx)
            key = training_key(Path(distilled_dir), student, teacher_spec, protocol)
            students_from = students_from or chosen  # its seed 0 is the chosen lr's student
        job = _StudentJob(distilled, test, relabeller, student, protocol, key, stage, run, ctx)
        runs = [job.seed(seed, students_from) for seed in seeds]
        results = _results(distilled, relabeller, student, protocol, runs, config, start, test)
        results["lr_choice"] = lr_choice
        if ctx.is_main:
            atomic_write_json(stage / "results.json", results)
            fault_point("results-written")
            finish_output(stage, out)
        ctx.barrier()
    if ctx.is_main and run.progress:
        print(
            f"{results['method']} {results['dataset']} ipc={results['ipc']} {student}: "
            f"{format_accuracy(results['mean'], results['std'], len(seeds))} "
            f"(last epoch, {len(seeds)} seed(s)) -> {out / 'results.json'}",
            flush=True,
        )
    return results


def _choose_lr(distilled, distilled_dir, relabeller, student, teacher_spec, protocol, stage,
               run, ctx):  # fmt: skip
    """Hard labels: the learning rate of ``protocol.lr_grid`` whose seed-0 student scores best
    on the validation split the set was distilled without (DD-Ranking tunes hard-label runs
    the same way, on its test set). Returns (the protocol at that lr, the record of the
    choice, the folder of its kept student)."""
    validation = ValidationSplit.from_dict(distilled.manifest.get("validation"))
    if validation is None:
        raise UserError(
            f"{distilled_dir}: the hard protocol chooses its learning rate on the validation "
            "split, and this set has none; distill with --val-per-class N, or give --lr"
        )
    val = load_dataset(distilled.info.name, "val", run.data_root, cache_dir=run.cache_dir,
                       validation=validation, image_size=distilled.info.image_size)  # fmt: skip

    def score(lr: float) -> float:
        trial = protocol.model_copy(update={"lr": lr})
        folder = stage / "lr-search" / f"lr_{lr:g}"
        folder.mkdir(parents=True, exist_ok=True)
        key = training_key(distilled_dir, student, teacher_spec, trial)
        job = _StudentJob(distilled, val, relabeller, student, trial, key, folder, run, ctx)
        return job.seed(0, None).accuracy

    grid, scores, extended = search_lr(protocol.lr_grid, score, protocol.lr_grid_extend)
    best = max(range(len(scores)), key=lambda i: scores[i])  # ties: the lowest lr
    lr = grid[best]
    record = {
        "chosen": lr,
        "grid": grid,
        "val_accuracy": scores,
        "extended": extended,
        "at_edge": best in (0, len(grid) - 1) and len(grid) > 1,
        "how": "one student (seed 0) per lr, measured on the validation split the set was "
        "distilled without; the best is kept, ties to the lowest lr; where the best was the "
        f"grid's lowest or highest value, up to {protocol.lr_grid_extend} more values past "
        "that edge, one edge step each",
        "validation": val.validation,
    }
    return protocol.model_copy(update={"lr": lr}), record, stage / "lr-search" / f"lr_{lr:g}"


def search_lr(grid, score, extend: int) -> tuple[list[float], list[float], list[float]]:
    """``score`` each lr of ``grid``; while the best is the lowest or highest value tried,
    up to ``extend`` more, each one edge step past it (the ratio of the edge to its neighbour).
    Returns the values tried (ascending), their scores and the values added."""
    tried = {lr: score(lr) for lr in sorted(grid)}
    extended = []
    for _ in range(extend):
        lrs = sorted(tried)
        if len(lrs) < 2:
            break
        best = max(lrs, key=lambda lr: (tried[lr], -lr))  # ties: the lowest lr
        if best == lrs[0]:
            new = lrs[0] * lrs[0] / lrs[1]
        elif best == lrs[-1]:
            new = lrs[-1] * lrs[-1] / lrs[-2]
        else:
            break
        new = float(f"{new:.6g}")  # 0.0002, not 0.00019999999999999998
        tried[new] = score(new)
        extended.append(new)
    lrs = sorted(tried)
    return lrs, [tried[lr] for lr in lrs], extended


def _check_memory(distilled, test, relabeller, student, protocol, run) -> None:
    """Refused up front where a student's training and test pass would not fit in memory."""
    info = distilled.info
    model = create_model(student, info)
    total, largest = activation_bytes(model, info)
    bs = batch_size(protocol, distilled)
    _, teacher_largest = activation_bytes(relabeller.model, info)
    evaluation = protocol.eval_batch_size or inference_batch(model, info)
    pixels = info.channels * info.image_size**2
    check_fits(
        {
            # uint8 and a float copy; the full baseline reads its images a batch at a time
            "the set": len(distilled) * pixels * 5 if torch.is_tensor(distilled.images) else 0,
            "a training batch": bs * total,
            "the teacher's labels": bs * 2 * teacher_largest,
            "the test pass": evaluation * 2 * largest,
            "the measured split": test.resident_bytes(),
            "the models": 16 * sum(p.numel() for p in model.parameters()),
        },
        f"evaluating {distilled.path} with {student}",
        "lower the batch size (--config with batch_size), or free memory",
    )


def _check_request(seeds: list[int], split: str, students_from) -> None:
    """Refuse what cannot run, before anything is loaded."""
    if not seeds:
        raise UserError("--seeds must be at least 1")
    if split not in ("test", "val"):
        raise UserError(f"--split {split!r}: choose 'test' (the reported figure) or 'val'")
    if students_from is not None and not Path(students_from).is_dir():
        raise UserError(f"--students-from {students_from}: no such folder of an evaluation")


def _set_and_split(distilled_dir: Path, split: str, protocol: ProtocolConfig, run: RunContext):
    """(the distilled set, the split its students are measured on): ``val`` is the split the
    set's candidates were kept away from."""
    distilled = load_distilled(distilled_dir, run=run)
    validation = ValidationSplit.from_dict(distilled.manifest.get("validation"))
    if split == "val" and validation is None:
        raise UserError(
            f"{distilled_dir}: was distilled without a validation split, so no images are "
            "held out from it; distill with --val-per-class N to measure on --split val"
        )
    test = load_dataset(
        distilled.info.name,
        split,
        run.data_root,
        cache_dir=run.cache_dir,
        validation=validation,
        image_size=distilled.info.image_size,
    )
    if protocol.test_per_class is not None:
        test = subset(
            test, per_class_sample(test.targets, test.info.num_classes, protocol.test_per_class, 0)
        )
    check_teacher_fits(test.info, distilled.info, str(distilled_dir))
    return distilled, test


@dataclass
class _StudentJob:
    """Students of one evaluation, one seed at a time: a finished seed is read back, a kept
    student of another evaluation is measured, any other is trained (resumably)."""

    distilled: object
    test: ImageDataset
    relabeller: object
    student: str
    protocol: ProtocolConfig
    key: str
    stage: Path
    run: RunContext
    ctx: object

    def seed(self, seed: int, students_from) -> StudentRun:
        record = seed_record(self.stage, seed)
        if record.is_file():
            saved = json.loads(record.read_text())
            return StudentRun(seed, saved["accuracy"], saved["curve"])
        kept = _measure_kept(
            students_from, seed, self.key, self.student, self.distilled.info, self.test,
            self.protocol, self.relabeller, self.ctx,
        )  # fmt: skip
        if kept is not None:
            if self.ctx.is_main:
                shutil.copy(student_file(students_from, seed), student_file(self.stage, seed))
                atomic_write_json(
                    record, {"seed": seed, "accuracy": kept.accuracy, "curve": kept.curve}
                )
            return kept
        state = self.stage / f"seed_{seed}_state.safetensors"
        trained = train_student(
            self.distilled, self.test, self.relabeller.model, self.student, self.protocol, seed,
            state_path=state, ctx=self.ctx, progress_bar=self.run.progress,
        )  # fmt: skip
        if self.ctx.is_main:
            save_student(student_file(self.stage, seed), trained.model, seed, self.key)
            atomic_write_json(
                record, {"seed": seed, "accuracy": trained.accuracy, "curve": trained.curve}
            )
            state.unlink(missing_ok=True)
            fault_point("seed-done")
        return trained


def _measure_kept(
    students_from, seed, key, student, info, test, protocol, relabeller, ctx
) -> StudentRun | None:
    """The kept student of ``seed`` measured on ``test``, or None if there is none to reuse."""
    if students_from is None or not (source := seed_record(students_from, seed)).is_file():
        return None
    model = create_model(student, info)
    if not load_student(student_file(students_from, seed), key, model):
        return None
    model.to(next(relabeller.model.parameters()).device)
    batch = protocol.eval_batch_size or inference_batch(model, info)
    accuracy = ctx.sharded_accuracy(model, test, batch)
    # the same training, so the same losses; the source's probe points measured its own split
    curve = [
        {"epoch": p["epoch"], "train_loss": p["train_loss"]}
        for p in json.loads(source.read_text())["curve"]
    ]
    curve[-1].update(test_accuracy=accuracy, student_from=str(students_from))
    return StudentRun(seed, accuracy, curve)


def _results(
    distilled,
    relabeller,
    student: str,
    protocol: ProtocolConfig,
    runs: list[StudentRun],
    config: dict,
    start: float,
    test: ImageDataset,
) -> dict:
    accs = [r.accuracy for r in runs]
    n = len(distilled)
    ipc = distilled.ipc
    bs = batch_size(protocol, distilled)
    epochs = student_epochs(protocol, math.ceil(n / bs))
    return {
        "format": RESULTS_FORMAT,
        "method": distilled.method,
        "dataset": distilled.info.name,
        "ipc": ipc,
        "num_images": n,
        "factor": distilled.factor,
        "student": student,
        "protocol": protocol.name,
        # the training budget: the epochs run and the optimizer steps they took; "budget" says
        # which of the two the protocol fixed
        "epochs": epochs,
        "steps": student_steps(protocol, math.ceil(n / bs)),
        "budget": "epochs" if protocol.steps is None else "steps",
        "lr": protocol.lr or STUDENT_LR.get(student, 1e-3),
        "split": config["split"],  # what "accuracy" measured: the test set, or val
        "validation": test.validation if config["split"] == "val" else None,
        # the split the set was distilled without (whichever split is measured here)
        "held_out": distilled.manifest.get("validation"),
        "test_images": len(test),
        "batch_size": bs,
        "teacher_accuracy": relabeller.meta.get("test_accuracy"),
        # which teacher did what: the one that relabels online here (``teacher``), the one
        # that selected the patches, and the one whose logits the set stores
        "teacher": relabeller.describe(),
        "distill_teacher": distilled.manifest.get("teacher"),
        "label_teacher": distilled.manifest.get("label_teacher"),
        "labels_from": {"online": "online", "static": "stored", "hard": "hard"}[protocol.labels],
        "recipe": (distilled.manifest.get("config") or {}).get("recipe"),
        "seeds": [r.seed for r in runs],
        "accuracy": accs,
        "mean": statistics.fmean(accs),
        "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
        "reported": "last_epoch",
        "distill_seconds": distilled.stats.get("total_seconds"),
        "evaluate_seconds": round(time.perf_counter() - start, 2),
        "curves": [{"seed": r.seed, "curve": r.curve} for r in runs],
        "config": dict(
            config,
            protocol_config=protocol.model_dump(),
            distill_config=distilled.manifest.get("config"),
        ),
    }
