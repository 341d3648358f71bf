"""Teacher training: one checkpoint per epoch, resumable after a kill, reproducible from a seed.

Every random draw of epoch ``e`` comes from a generator seeded by ``(seed, e)``, and the
optimizer state is saved with each epoch, so a run resumed from epoch ``e`` computes exactly
what an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from infoutil import distributed as dist_util
from infoutil.atomic import atomic_save_tensors, atomic_write_json, dumps_json
from infoutil.config import TeacherConfig, build_config
from infoutil.data import per_class_sample, subset
from infoutil.data.augment import random_crop_flip, to_float
from infoutil.data.base import batches
from infoutil.data.sources import load_split_of
from infoutil.errors import UserError
from infoutil.io.checkpoint import (
    RUN_FILE,
    completed_epochs,
    epoch_paths,
    foreign_file,
    save_teacher_epoch,
)
from infoutil.io.lock import output_lock
from infoutil.models import Classifier, activation_bytes, create_model, inference_batch
from infoutil.runtime import (
    RunContext,
    check_fits,
    compiled_or_refused,
    fault_point,
    generator,
    is_main_process,
    precision_autocast,
    progress,
    warn,
)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only, not on norms or biases (RDED's ``get_parameters``)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def cosine_lr(base: float, step: int, total: int, floor: float = 0.0) -> float:
    """Cosine from ``base`` down to ``floor * base`` over ``total`` steps."""
    t = min(step / max(total, 1), 1.0)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def _log_line(out_dir: Path, row: dict) -> None:
    """One line of ``train_log.jsonl``: an epoch's numbers, or a change to the run."""
    with open(out_dir / "train_log.jsonl", "ab") as f:
        f.write(dumps_json(row).replace(b"\n", b"") + b"\n")


def _remove_failed_start(out_dir: Path, created: bool) -> None:
    """Undo a start that finished no epoch: the files this run wrote, and the folder if this
    run made it (nothing else is there: the folder was checked first)."""
    for p in out_dir.iterdir() if out_dir.is_dir() else ():
        if RUN_FILE.match(p.name):
            p.unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            out_dir.rmdir()


def _state_path(out_dir: Path, epoch: int) -> Path:
    return out_dir / f"optimizer_{epoch:04d}.safetensors"


def _save_optimizer(out_dir: Path, epoch: int, model, opt) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in opt.param_groups:
        for p in group["params"]:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{names[id(p)]}"] = buf
    atomic_save_tensors(_state_path(out_dir, epoch), tensors)


def _load_optimizer(out_dir: Path, epoch: int, model, opt) -> None:
    from safetensors.torch import load_file

    path = _state_path(out_dir, epoch)
    if not path.is_file():
        raise UserError(
            f"{path}: optimizer state for epoch {epoch} is missing; cannot resume "
            "exactly (start again with another --out)"
        )
    tensors = load_file(str(path))
    for name, p in model.named_parameters():
        key = f"momentum.{name}"
        if key in tensors:
            opt.state[p]["momentum_buffer"] = tensors[key].to(p.device)


def default_lr(arch: str, image_size: int) -> float:
    """The teacher's learning rate where none is given: 0.05 up to 32 px (ConvNet-3 on CIFAR-10
    and Fashion-MNIST, measured), 0.01 above (ConvNet-5 at 128 px diverged at 0.05 on
    ImageWoof and learns at 0.01; BENCHMARKS.md). ``LossWatch`` warns where a choice climbs."""
    return 0.05 if image_size <= 32 else 0.01


class LossWatch:
    """Says in one line when the first batches' loss climbs instead of falling: the sign of a
    learning rate too high for this architecture and input size (ConvNet-5 at 128 px and
    lr 0.05 went from 2.35 to 2.9 within 15 batches)."""

    def __init__(self, lr: float, num_classes: int, first: int = 3, window: int = 20):
        self.lr, self.floor = lr, math.log(num_classes)
        self.first, self.window = first, window
        self.losses: list[float] = []
        self.warned = False

    def add(self, loss: float) -> str | None:
        """Record one batch's mean loss; the warning, once, when the loss is climbing."""
        if not math.isfinite(loss):
            raise UserError(
                f"teacher train: the loss became {loss} at batch {len(self.losses) + 1} with "
                f"lr {self.lr:g}; the run diverged, start again with a lower --lr "
                f"(try {self.lr / 5:g})"
            )
        self.losses.append(loss)
        if self.warned or len(self.losses) != self.window:
            return None
        start = statistics.fmean(self.losses[: self.first])
        recent = statistics.fmean(self.losses[self.window // 2 :])
        if recent <= max(start, self.floor) * 1.05:
            return None
        self.warned = True
        return (
            f"teacher train: the loss is climbing ({start:.2f} over the first {self.first} "
            f"batches, {recent:.2f} over batches {self.window // 2 + 1}-{self.window}) at lr "
            f"{self.lr:g}; it may diverge: stop and try --lr {self.lr / 5:g}"
        )


def _teacher_data(cfg: TeacherConfig, data_root, cache_dir):
    """(training images, the per-epoch probe, the test set): the probe is a class-balanced
    sample of the validation split where one is held out, else of the test set; the whole
    test set is measured once, at the schedule's last epoch."""
    train = load_split_of(cfg, "train", data_root, cache_dir)
    test = load_split_of(cfg, "test", data_root, cache_dir)
    classes = train.info.num_classes
    if cfg.train_per_class is not None:
        train = subset(
            train, per_class_sample(train.targets, classes, cfg.train_per_class, cfg.seed)
        )
    if cfg.test_per_class is not None:
        test = subset(test, per_class_sample(test.targets, classes, cfg.test_per_class, 0))
    pool = load_split_of(cfg, "val", data_root, cache_dir) if cfg.validation else test
    probe = pool
    if cfg.probe_images is not None and cfg.probe_images < len(pool):
        per_class = max(1, cfg.probe_images // classes)
        probe = subset(pool, per_class_sample(pool.targets, classes, per_class, 0))
    return train, probe, test


def _check_out_dir(out_dir: Path, cfg: TeacherConfig, done: list[int], resume: bool,
                   reschedule: bool, main: bool = True) -> dict | None:  # fmt: skip
    """Refuse an ``out_dir`` this run may not write into; the reschedule record, if any."""
    if done and not resume:
        raise UserError(
            f"{out_dir}: already holds teacher checkpoints (epochs {done[0]}.."
            f"{done[-1]}); pass --resume to continue, or choose another --out"
        )
    if main and not done and (foreign := foreign_file(out_dir)) is not None:
        raise UserError(
            f"{out_dir}: holds {foreign.name}, which no teacher run wrote; teacher train "
            "writes only into a new or empty folder, or its own run's: choose another --out"
        )
    if reschedule and not (resume and done):
        raise UserError(f"{out_dir}: --reschedule changes a run in progress; add --resume")
    config_path = out_dir / "config.json"
    if not (resume and config_path.is_file()):
        return None
    saved = build_config(TeacherConfig, json.loads(config_path.read_text()), str(config_path))
    if saved.lr is None:  # written before the default was resolved into the file
        saved = saved.model_copy(update={"lr": cfg.lr})
    only_epochs = saved != cfg and saved.model_copy(update={"epochs": cfg.epochs}) == cfg
    if reschedule and only_epochs:
        if cfg.epochs <= done[-1]:
            raise UserError(
                f"{out_dir}: --reschedule to {cfg.epochs} epochs, but epoch "
                f"{done[-1]} is already done; choose more epochs"
            )
        return {
            "rescheduled_after_epoch": done[-1],
            "from_epochs": saved.epochs,
            "to_epochs": cfg.epochs,
        }
    if saved != cfg:
        if only_epochs:
            hint = f" (only --epochs differs, {saved.epochs}: add --reschedule to change it)"
        elif reschedule:
            hint = " (only --epochs may change, with --reschedule)"
        else:
            hint = ""
        raise UserError(
            f"{out_dir}: --resume with a different config than the run "
            f"that wrote it{hint}; use the same options or another --out"
        )
    return None


def train_teacher(
    cfg: TeacherConfig,
    out_dir: str | Path,
    *,
    run: RunContext | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    reschedule: bool = False,
) -> dict:
    """Train ``cfg.arch`` on ``cfg.dataset``; returns the last epoch's metadata.

    ``stop_after`` ends the run after that many epochs of this invocation (the schedule still
    spans ``cfg.epochs``), so a run can be continued later with ``resume``.

    ``reschedule`` lets a resumed run change ``epochs`` only (a budget that shrank or grew):
    the cosine is recomputed over the new total from the next step on, and the change is
    written to ``train_log.jsonl``. The result is then not the bytes of an uninterrupted run.
    """
    out_dir, run = Path(out_dir), run or RunContext()
    train, probe, test = _teacher_data(cfg, run.data_root, run.cache_dir)
    if cfg.lr is None:
        cfg = cfg.model_copy(update={"lr": default_lr(cfg.arch, train.info.image_size)})
    ctx = dist_util.context()
    with output_lock(out_dir) if ctx.is_main else _null():
        done = completed_epochs(out_dir)
        # the main rank judges the folder (the others would see its writes in flight)
        rescheduled = _check_out_dir(out_dir, cfg, done, resume, reschedule, ctx.is_main)
        created = not out_dir.exists()
        try:
            if ctx.is_main:
                if rescheduled is not None:
                    # the log first: a kill between the two leaves the change recorded
                    _log_line(out_dir, rescheduled)
                atomic_write_json(out_dir / "config.json", cfg.model_dump())
            start = done[-1] if resume and done else 0
            return _train_epochs(cfg, out_dir, train, probe, test, start, stop_after, run, ctx)
        except BaseException:
            if ctx.is_main and not completed_epochs(out_dir):
                _remove_failed_start(out_dir, created)
            raise


def _train_epochs(cfg, out_dir, train, probe, test, start, stop_after, run, ctx) -> dict:
    """The epochs from ``start`` on: a checkpoint, the optimizer state and a log line each."""
    torch.manual_seed(cfg.seed)
    compute = run.compute
    model: Classifier = create_model(cfg.arch, train.info).to(compute)
    opt = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    if start:
        from infoutil.io.checkpoint import load_teacher

        model.load_state_dict(
            load_teacher(out_dir / f"epoch_{start:04d}.safetensors").model.state_dict()
        )
        _load_optimizer(out_dir, start, model, opt)
    if start >= cfg.epochs:
        return json.loads(epoch_paths(out_dir, start)[1].read_text())
    _check_memory(cfg, train, model)
    probe_batch = inference_batch(model, train.info)
    ddp_model, eval_model = ctx.wrap(model), model
    if cfg.compile:
        ddp_model = compiled_or_refused(ddp_model, "the teacher")
        eval_model = compiled_or_refused(model, "the teacher")
    watch = LossWatch(cfg.lr, train.info.num_classes) if start == 0 else None
    meta: dict = {}
    last = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    for epoch in range(start, last):
        t0 = time.perf_counter()
        loss = _one_epoch(cfg, epoch, train, ddp_model, opt, watch, compute, ctx, run.progress)
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": loss}
        row["probe_accuracy"] = ctx.sharded_accuracy(eval_model, probe, probe_batch)
        if epoch + 1 == cfg.epochs:
            row["test_accuracy"] = ctx.sharded_accuracy(eval_model, test, probe_batch)
        meta = {
            "arch": cfg.arch,
            "dataset": train.info.to_dict(),
            "epoch": epoch + 1,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "test_accuracy": round(row["test_accuracy"], 6) if "test_accuracy" in row else None,
            # measured every epoch: a class-balanced sample of the validation split where one
            # is held out (the curve to stop on), else of the test set
            "probe": {
                "split": "val" if train.validation else "test",
                "images": len(probe),
                "accuracy": round(row["probe_accuracy"], 6),
            },
            "train_images": len(train),
            "config": cfg.model_dump(),
            # the images this teacher never saw (None: the whole training set)
            "validation": train.validation,
        }
        if ctx.is_main:
            # optimizer state first: once the epoch's JSON exists, resuming from it works
            _save_optimizer(out_dir, epoch + 1, model, opt)
            meta = save_teacher_epoch(out_dir, model, meta)
            _state_path(out_dir, epoch).unlink(missing_ok=True)  # the previous epoch's
            seconds = time.perf_counter() - t0
            rate = len(train) / train_seconds
            row.update(seconds=round(seconds, 2), train_seconds=round(train_seconds, 2),
                       train_images_per_second=round(rate, 1))  # fmt: skip
            _log_line(out_dir, row)
            if is_main_process() and run.progress:
                shown = ", ".join(
                    f"{k.split('_')[0]} accuracy {row[k]:.4f}"
                    for k in ("probe_accuracy", "test_accuracy")
                    if k in row
                )
                print(
                    f"epoch {epoch + 1}/{cfg.epochs}: {shown}, {seconds:.0f}s "
                    f"(training {rate:.0f} images/s)",
                    flush=True,
                )
        ctx.barrier()
    return meta


def _check_memory(cfg: TeacherConfig, train, model) -> None:
    """Refused up front where a training step would not fit in memory."""
    total, _ = activation_bytes(model, train.info)
    check_fits(
        {
            "the training images held": train.resident_bytes(),
            "a batch's activations": cfg.batch_size * total,
            "weights, gradients and momentum": 12 * sum(p.numel() for p in model.parameters()),
        },
        f"teacher train ({cfg.arch} at {train.info.image_size} px, batch {cfg.batch_size})",
        "lower --batch-size",
    )


def _one_epoch(cfg, epoch, train, ddp_model, opt, watch, compute, ctx, progress_bar) -> float:
    """One pass over the training set in the seeded order of ``epoch``; its mean loss."""
    ddp_model.train()
    n = len(train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    g = generator("teacher", cfg.seed, epoch)
    order = torch.randperm(n, generator=g)
    bar = progress(
        range(steps_per_epoch),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        enabled=progress_bar,
    )
    loss_sum = 0.0
    stream = batches(train, order, cfg.batch_size, cfg.loader_workers)
    for step, raw in zip(bar, stream, strict=True):
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = to_float(raw)
        y = train.targets[idx]
        if cfg.augment:
            x = random_crop_flip(x, pad=max(1, train.info.image_size // 8), g=g)
        x, y = ctx.shard_batch(x, y)
        x, y = x.to(compute), y.to(compute)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, epoch * steps_per_epoch + step, total_steps)
        with precision_autocast(cfg.precision, compute.type):
            logits = ddp_model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum") * ctx.world_size / len(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        fault_point("teacher-step")
        value = float(loss.detach()) / ctx.world_size
        loss_sum += value
        if watch is not None and (message := watch.add(value)) is not None:
            warn(message)
        bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}")
    bar.close()
    return loss_sum / steps_per_epoch


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
