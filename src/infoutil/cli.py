"""The ``infoutil`` command line. Each command is a thin layer over a library function.

A user's mistake (a bad path, value or file) ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from infoutil.errors import UserError

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Dataset distillation by informativeness and utility (InfoUtil), with baselines, "
    "evaluation and reports.",
)
teacher_app = typer.Typer(no_args_is_help=True, help="Train, check and import teachers.")
app.add_typer(teacher_app, name="teacher")
data_app = typer.Typer(no_args_is_help=True, help="Inspect or download datasets.")
app.add_typer(data_app, name="data")

DataRoot = typer.Option(
    None, "--data-root", help="Folder holding the datasets (default: $INFOUTIL_DATA)."
)
CacheDir = typer.Option(
    None,
    "--cache-dir",
    help="Cache for decoded archives (default: $INFOUTIL_CACHE or ~/.cache/infoutil).",
)
Threads = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's).")
Device = typer.Option("auto", "--device", help="auto (a GPU if there is one), cpu or cuda.")
ConfigFile = typer.Option(None, "--config", "-c", help="YAML file of options; flags override it.")
ValPerClass = typer.Option(
    None,
    "--val-per-class",
    help="Hold out a seeded validation split of N training images per class; nothing in "
    "this run draws from it (measure on it with 'evaluate --split val').",
)
ValSeed = typer.Option(None, "--val-seed", help="Seed of the validation split (default 0).")
ImageSize = typer.Option(
    None,
    "--image-size",
    help="Side in pixels that imagefolder:PATH images are resized and centre-cropped to "
    "(default: the first image's shorter side, at most 224); recorded in every output.",
)


def _config(cls, config: Path | None, flags: dict, base: dict | None = None):
    """Defaults < ``base`` < the YAML file < the flags given; errors name the bad key."""
    from infoutil.config import build_config, merge, read_yaml

    values = merge(merge(base or {}, read_yaml(config) if config else {}), flags)
    return build_config(cls, values, str(config or "options"))


def _setup(threads: int | None) -> None:
    if threads is not None:
        import torch

        if threads < 1:
            raise UserError(f"--threads must be at least 1, not {threads}")
        torch.set_num_threads(threads)


@data_app.command("info")
def data_info(
    dataset: str = typer.Option(..., "--dataset"),
    download: bool = typer.Option(
        False,
        "--download",
        help="Fetch it first if missing (cifar10, cifar100 pickles; fashion-mnist; the "
        "320 px imagewoof and imagenette releases).",
    ),
    image_size: int | None = ImageSize,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
) -> None:
    """Load both splits of a dataset and print what infoutil sees: sizes, classes, order."""
    from infoutil.data import load_dataset
    from infoutil.data.imagenet import display_name

    for split in ("train", "test"):
        ds = load_dataset(
            dataset,
            split,
            data_root,
            download=download,
            cache_dir=cache_dir,
            image_size=image_size,
        )
        counts = ds.targets.bincount(minlength=ds.info.num_classes).tolist()
        typer.echo(
            f"{split}: {len(ds)} images, {ds.info.channels}x{ds.info.image_size}x"
            f"{ds.info.image_size}, {ds.info.num_classes} classes, per class "
            f"{min(counts)}..{max(counts)}"
        )
    names = [n if display_name(n) == n else f"{n} ({display_name(n)})" for n in ds.info.class_names]
    typer.echo("classes (label order): " + ", ".join(names))


@data_app.command("prepare")
def data_prepare(
    path: Path = typer.Argument(..., help="An image folder with train/ and a flat val/."),
    val_labels: Path = typer.Option(
        ...,
        "--val-labels",
        help="The validation labels: Kaggle's LOC_val_solution.csv, or lines of 'FILE CLASS'.",
    ),
) -> None:
    """Sort a flat val/ folder (ImageNet's validation layout) into val/<class>/ folders."""
    from infoutil.data.folders import sort_flat_split

    moved = sort_flat_split(path / "val", val_labels, classes_from=path / "train")
    typer.echo(f"{path}/val: {moved} images sorted into class folders; use imagefolder:{path}")


@teacher_app.command("train")
def teacher_train(
    dataset: str = typer.Option(
        ..., "--dataset", help="cifar10, cifar100, fashion-mnist or imagefolder:PATH"
    ),
    arch: str | None = typer.Option(None, "--arch", help="Default: convnet3."),
    epochs: int | None = typer.Option(None, "--epochs", help="Default: 10."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory (one file per epoch)."),
    seed: int | None = typer.Option(None, "--seed", help="Default: 0."),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr"),
    train_per_class: int | None = typer.Option(
        None, "--train-per-class", help="Train on a seeded subset of this many images per class."
    ),
    test_per_class: int | None = typer.Option(
        None, "--test-per-class", help="Measure accuracy on this many test images per class."
    ),
    val_per_class: int | None = ValPerClass,
    val_seed: int | None = ValSeed,
    image_size: int | None = ImageSize,
    compile_model: bool | None = typer.Option(
        None,
        "--compile/--no-compile",
        help="Train through torch.compile (needs a C++ compiler; about 1.7x faster on CPU).",
    ),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32 (default) or bf16: autocast forwards, fp32 weights."
    ),
    probe_images: int | None = typer.Option(
        None,
        "--probe-images",
        help="Images measured after each epoch, class-balanced, from the validation split if "
        "held out, else the test set (default 2000); the whole test set at the last epoch.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    stop_after: int | None = typer.Option(
        None, "--stop-after", help="Stop after this many epochs of this invocation."
    ),
    reschedule: bool = typer.Option(
        False,
        "--reschedule",
        help="With --resume: accept a new --epochs and recompute the cosine over it (logged).",
    ),
    config: Path | None = ConfigFile,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
    device: str = Device,
) -> None:
    """Train a teacher; save a checkpoint after every epoch."""
    from infoutil.config import TeacherConfig
    from infoutil.training.teacher import train_teacher

    _setup(threads)
    cfg = _config(
        TeacherConfig,
        config,
        {
            "dataset": dataset,
            "arch": arch,
            "epochs": epochs,
            "seed": seed,
            "batch_size": batch_size,
            "lr": lr,
            "train_per_class": train_per_class,
            "test_per_class": test_per_class,
            "val_per_class": val_per_class,
            "val_seed": val_seed,
            "image_size": image_size,
            "compile": compile_model,
            "precision": precision,
            "probe_images": probe_images,
        },
    )

    meta = train_teacher(
        cfg,
        out,
        data_root=data_root,
        cache_dir=cache_dir,
        resume=resume,
        stop_after=stop_after,
        reschedule=reschedule,
        device=device,
    )
    measured = (
        f"test accuracy {meta['test_accuracy']:.4f}"
        if meta.get("test_accuracy") is not None
        else f"{meta['probe']['split']} probe accuracy {meta['probe']['accuracy']:.4f}"
    )
    typer.echo(f"teacher {cfg.arch} on {cfg.dataset}: epoch {meta['epoch']}, {measured} -> {out}")


@teacher_app.command("eval")
def teacher_eval(
    teacher: str = typer.Argument(..., help="Checkpoint: DIR, DIR@EPOCH or FILE.safetensors."),
    dataset: str | None = typer.Option(None, "--dataset", help="Default: the teacher's own."),
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
) -> None:
    """Measure a teacher's top-1 accuracy on the real test set."""
    from infoutil.data import load_dataset
    from infoutil.data.sources import RESIZABLE, dataset_info
    from infoutil.evaluation.metrics import accuracy
    from infoutil.io.checkpoint import load_teacher

    _setup(threads)
    t = load_teacher(teacher)
    name = dataset or t.info.name
    # a folder of images (or an ImageNet subset) is resized to the size the teacher expects
    resizable = name.startswith("imagefolder:") or name in RESIZABLE
    size = t.info.image_size if resizable else None
    expected = dataset_info(name, data_root, size)
    if expected is not None:  # a teacher that cannot fit is refused before any image is decoded
        load_teacher(teacher, expect=expected)
    test = load_dataset(name, "test", data_root, cache_dir=cache_dir, image_size=size)
    t = load_teacher(teacher, expect=test.info)
    acc = accuracy(t.model, test)
    typer.echo(
        f"{t.path}: {t.arch} epoch {t.epoch}, test accuracy {acc:.4f} "
        f"(recorded {t.meta.get('test_accuracy')})"
    )


@teacher_app.command("import")
def teacher_import(
    weights: Path = typer.Argument(
        ..., help="Weights file: .pth/.pt/.bin (read with weights_only=True) or .safetensors."
    ),
    arch: str = typer.Option(..., "--arch", help="Our architecture the weights are for."),
    out: Path = typer.Option(..., "--out"),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="The classes the weights were trained on, in their order: imagenet-1k (1,000 "
        "wnids, ImageNet's mean and std) or a dataset name (its order; default: --dataset).",
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help="Measure the teacher's test accuracy on this dataset (an ImageNet-1K teacher on "
        "a wnid subset such as imagewoof: its logits at the subset's classes).",
    ),
    layout: str = typer.Option(
        "auto", "--layout", help="Parameter names: auto, torchvision, timm, rded or infoutil."
    ),
    image_size: int | None = ImageSize,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
) -> None:
    """Make an infoutil teacher from published weights (torchvision, timm, RDED); no code in
    the file runs, and neither torchvision nor timm is needed."""
    import copy
    import hashlib

    from infoutil.data import load_dataset
    from infoutil.data.sources import dataset_info
    from infoutil.evaluation.metrics import accuracy
    from infoutil.io.checkpoint import class_fit, completed_epochs, save_teacher_epoch
    from infoutil.models.pretrained import import_weights, restrict_classes

    _setup(threads)
    classes = classes or dataset
    if classes is None:
        raise UserError("teacher import: pass --classes imagenet-1k, or --classes/--dataset NAME")
    if completed_epochs(out):
        raise UserError(f"{out}: already holds a teacher; choose another --out")
    source = None
    if classes != "imagenet-1k":
        source = (
            dataset_info(classes, data_root, image_size)
            or load_dataset(
                classes, "test", data_root, cache_dir=cache_dir, image_size=image_size
            ).info
        )
    model, info, layout = import_weights(weights, arch, classes, layout, image_size, source)
    acc = None
    if dataset is not None:
        size = image_size or info.image_size
        known = dataset_info(dataset, data_root, size)
        if known is not None:
            class_fit(info, known, str(weights))  # refused before any image is decoded
        test = load_dataset(dataset, "test", data_root, cache_dir=cache_dir, image_size=size)
        _, restriction = class_fit(info, test.info, str(weights))
        scored = model
        if restriction is not None:  # measured on the subset's logits; saved whole
            scored = copy.deepcopy(model)
            restrict_classes(scored, restriction["indices"])
        acc = round(accuracy(scored, test), 6)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    save_teacher_epoch(
        out,
        model,
        {
            "arch": arch,
            "dataset": info.to_dict(),
            "epoch": 1,
            "epochs": 1,
            "seed": None,
            "test_accuracy": acc,
            "test_dataset": dataset,
            "imported_from": {"file": weights.name, "sha256": digest, "layout": layout},
        },
    )
    measured = f", test accuracy on {dataset} {acc:.4f}" if acc is not None else ""
    typer.echo(
        f"imported {weights} ({layout} layout) as {arch}, {info.num_classes} classes of "
        f"{info.name}{measured} -> {out}"
    )


Overwrite = typer.Option(False, "--overwrite", help="Replace a finished output at --out.")
Resume = typer.Option(False, "--resume", help="Continue an interrupted run (OUT.partial).")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")


@app.command()
def distill(
    method: str | None = typer.Option(
        None, "--method", help="infoutil (default), rded, random, herding, kcenter or full."
    ),
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        help="A preset of InfoUtil's free choices: default (chosen on a validation split: "
        "whole images at every resolution, so no Shapley map; one image per source; the "
        "easiest image of each feature group), or paper (the paper's text read literally); other "
        "options override it.",
    ),
    dataset: str | None = typer.Option(None, "--dataset"),
    teacher: str = typer.Option(
        ...,
        "--teacher",
        help="Teacher checkpoint (DIR, DIR@EPOCH or FILE.safetensors) that scores candidates.",
    ),
    ipc: int | None = typer.Option(None, "--ipc", help="Images per class."),
    out: Path = typer.Option(..., "--out"),
    label_teacher: str | None = typer.Option(
        None,
        "--label-teacher",
        help="Checkpoint for the soft labels (default: --teacher), "
        "e.g. an early epoch DIR@10 as the paper does at IPC 1 and 10.",
    ),
    seed: int | None = typer.Option(None, "--seed"),
    candidates_per_class: int | None = typer.Option(None, "--candidates-per-class"),
    factor: int | None = typer.Option(
        None,
        "--factor",
        help="Patches per side of a distilled image (default: 1, whole images; rded and "
        "--recipe paper: 1 up to 64 px, else 2).",
    ),
    estimator: str | None = typer.Option(
        None, "--estimator", help="leverage-gp (default), leverage, kernel, permutation or exact."
    ),
    budget: int | None = typer.Option(None, "--budget", help="Shapley evaluations per candidate."),
    grad_norm: str | None = typer.Option(None, "--grad-norm", help="full or last_layer."),
    val_per_class: int | None = ValPerClass,
    val_seed: int | None = ValSeed,
    image_size: int | None = ImageSize,
    config: Path | None = ConfigFile,
    resume: bool = Resume,
    overwrite: bool = Overwrite,
    quiet: bool = Quiet,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
    device: str = Device,
) -> None:
    """Distill a dataset into IPC images per class, written to --out."""
    from infoutil.config import DistillConfig
    from infoutil.methods import distill as run_distill

    _setup(threads)
    cfg = _config(
        DistillConfig,
        config,
        {
            "method": method,
            "recipe": recipe,
            "dataset": dataset,
            "ipc": ipc,
            "seed": seed,
            "candidates_per_class": candidates_per_class,
            "factor": factor,
            "val_per_class": val_per_class,
            "val_seed": val_seed,
            "image_size": image_size,
            "informativeness": {"estimator": estimator, "budget": budget},
            "utility": {"grad_norm": grad_norm},
        },
    )

    run_distill(
        cfg,
        teacher,
        out,
        label_teacher=label_teacher,
        data_root=data_root,
        cache_dir=cache_dir,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
        device=device,
    )


@app.command()
def evaluate(
    distilled: Path = typer.Argument(..., help="A distilled set written by 'infoutil distill'."),
    out: Path = typer.Option(..., "--out"),
    student: str = typer.Option("convnet3", "--student", help="Any registered model."),
    teacher: str | None = typer.Option(
        None, "--teacher", help="Teacher that relabels online (default: the set's label teacher)."
    ),
    protocol: str = typer.Option(
        "rded", "--protocol", help="rded (online labels) or static (stored per-patch labels)."
    ),
    split: str = typer.Option(
        "test",
        "--split",
        help="Measure on 'test' (the real test set, the reported figure) or 'val' (the "
        "validation split the set was distilled without; for choosing recipes).",
    ),
    epochs: int | None = typer.Option(None, "--epochs"),
    seeds: int = typer.Option(1, "--seeds", help="Train this many students (seeds 0..N-1)."),
    students_from: Path | None = typer.Option(
        None,
        "--students-from",
        help="Another evaluation's --out: each seed whose student it kept, trained the same way "
        "on the same set, is measured here instead of trained again (its val students give the "
        "test row).",
    ),
    autoaugment: bool | None = typer.Option(None, "--autoaugment/--no-autoaugment"),
    compile_model: bool | None = typer.Option(
        None,
        "--compile/--no-compile",
        help="Train students (and relabel) through torch.compile (needs a C++ compiler).",
    ),
    config: Path | None = ConfigFile,
    resume: bool = Resume,
    overwrite: bool = Overwrite,
    quiet: bool = Quiet,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
    device: str = Device,
) -> None:
    """Train fresh students on a distilled set; report last-epoch top-1 on the real test set."""
    from infoutil.config import PROTOCOLS, ProtocolConfig
    from infoutil.evaluation.run import evaluate as run_evaluate

    _setup(threads)
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    flags = {"epochs": epochs, "autoaugment": autoaugment, "compile": compile_model}
    proto = _config(ProtocolConfig, config, flags, base=PROTOCOLS[protocol].model_dump())
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, not {seeds}")
    run_evaluate(
        distilled,
        out,
        student=student,
        teacher=teacher,
        protocol=proto,
        seeds=list(range(seeds)),
        data_root=data_root,
        cache_dir=cache_dir,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
        device=device,
        students_from=students_from,
        split=split,
    )


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Evaluation outputs (or folders holding them)."),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Collect results.json files into one table (markdown, CSV) and accuracy-vs-IPC plots."""
    from infoutil.evaluation.compare import compare as run_compare
    from infoutil.evaluation.compare import markdown_table

    rows = run_compare(runs, out)
    typer.echo(markdown_table(rows), nl=False)
    typer.echo(f"-> {out}/results.md, results.csv")


@app.command()
def report(
    run_dir: Path = typer.Argument(
        ..., help="A distilled set, an evaluation, or a folder of them."
    ),
    out: Path | None = typer.Option(None, "--out", help="Default: RUN_DIR/report."),
) -> None:
    """Write a static report.html (figures beside it, also as PNGs for papers)."""
    from infoutil.report.html import build_report

    typer.echo(f"report: {build_report(run_dir, out)}")


@app.command()
def demo(
    out: Path = typer.Option(Path("infoutil-demo"), "--out"),
    epochs: int = typer.Option(150, "--epochs", help="Student epochs per method."),
    seeds: int = typer.Option(1, "--seeds"),
    candidates_per_class: int = typer.Option(
        50, "--candidates-per-class", help="The candidate pool (smaller: a quicker look)."
    ),
    budget: int = typer.Option(128, "--budget", help="Shapley evaluations per candidate."),
    quiet: bool = Quiet,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
) -> None:
    """Distill Fashion-MNIST (IPC 10) with infoutil and rded, evaluate both, write a report."""
    from infoutil.demo import run_demo

    _setup(threads)
    run_demo(
        out,
        data_root=data_root,
        cache_dir=cache_dir,
        epochs=epochs,
        seeds=seeds,
        candidates_per_class=candidates_per_class,
        budget=budget,
        progress=not quiet,
    )


def main() -> None:
    """Entry point: run the app; a user's mistake becomes one line and exit status 2."""
    try:
        app()
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
