"""The ``infoutil`` command line. Each command is a thin layer over a library function.

A user's mistake (a bad path, value or file) ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from infoutil.config import DistillConfig, ProtocolConfig, TeacherConfig
from infoutil.data.sources import DATASETS, RESIZABLE
from infoutil.errors import UserError
from infoutil.models import list_models
from infoutil.runtime import RunContext

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


def _default(cls, key: str):
    return cls.model_fields[key].default


_MODELS = ", ".join(list_models())
_SIZES = "imagewoof and imagenette 128, tiny-imagenet 64, imagefolder:PATH its first image's \
shorter side up to 224"

# options shared by several commands: defined once, so that the commands cannot drift apart
DataRoot = typer.Option(
    None, "--data-root", help="Folder holding the datasets (default: $INFOUTIL_DATA)."
)
CacheDir = typer.Option(
    None,
    "--cache-dir",
    help="Cache for decoded images and scores (default: $INFOUTIL_CACHE or ~/.cache/infoutil).",
)
Threads = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's).")
Device = typer.Option(None, "--device", help="auto (a GPU if there is one; default), cpu or cuda.")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")
ConfigFile = typer.Option(None, "--config", "-c", help="YAML file of options; flags override it.")


def dataset_option(role: str = "The dataset") -> typer.models.OptionInfo:
    """``--dataset``, with the registry's names and what the command does with it."""
    return typer.Option(
        None,
        "--dataset",
        help=f"{role}: {', '.join(DATASETS)}; found under --data-root (docs/guide.md, Data).",
    )


Dataset = dataset_option()
ImageSize = typer.Option(
    None,
    "--image-size",
    help=f"Side in pixels that images are resized and centre-cropped to; only for "
    f"{', '.join(RESIZABLE)} (default: {_SIZES}). Recorded in every output.",
)
ValPerClass = typer.Option(
    None,
    "--val-per-class",
    help="Hold out a seeded validation split of N training images per class; nothing in "
    "this run draws from it (measure on it with 'evaluate --split val').",
)
ValSeed = typer.Option(None, "--val-seed", help="Seed of the validation split (default 0).")
Seed = typer.Option(None, "--seed", help="Seed of every random draw (default 0).")
Overwrite = typer.Option(
    False,
    "--overwrite",
    help="Replace a finished output of the same command at --out; a folder holding anything "
    "else, or this run's inputs, is refused.",
)
Resume = typer.Option(
    False,
    "--resume",
    help="Continue an interrupted run (OUT.partial); a finished OUT of the same options is "
    "left as it is.",
)


def _config(cls, config: Path | None, flags: dict, base: dict | None = None):
    """Defaults < ``base`` < the YAML file < the flags given; errors name the bad key."""
    from infoutil.config import build_config, merge, read_yaml

    values = merge(merge(base or {}, read_yaml(config) if config else {}), flags)
    return build_config(cls, values, str(config or "options"))


def _run(data_root=None, cache_dir=None, threads=None, device=None, quiet=False) -> RunContext:
    """The run context of a command, its threads applied."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}")
    run = RunContext(data_root, cache_dir, device, threads, not quiet)
    run.apply_threads()
    return run


@data_app.command("info")
def data_info(
    dataset: str = Dataset,
    download: bool = typer.Option(
        False,
        "--download",
        help="Fetch it first if missing (cifar10, cifar100 pickles; fashion-mnist; the "
        "320 px imagewoof and imagenette releases; tiny-imagenet's zip), each file checked "
        "against its published digest.",
    ),
    image_size: int | None = ImageSize,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
) -> None:
    """Load both splits of a dataset and print what infoutil sees: sizes, classes, order."""
    from infoutil.data import load_dataset

    if dataset is None:
        raise UserError("data info: pass --dataset NAME")
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
    dataset: str | None = Dataset,
    arch: str | None = typer.Option(
        None, "--arch", help=f"{_MODELS} (default {_default(TeacherConfig, 'arch')})."
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", help=f"Default {_default(TeacherConfig, 'epochs')}."
    ),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory (one file per epoch)."),
    seed: int | None = Seed,
    batch_size: int | None = typer.Option(
        None, "--batch-size", help=f"Default {_default(TeacherConfig, 'batch_size')}."
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="SGD learning rate, cosine to zero (default: 0.05 up to 32 px, 0.01 above; a "
        "loss that climbs in the first batches is reported).",
    ),
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
        None,
        "--precision",
        help="fp32 (default) or bf16: autocast forwards with fp32 weights, about 1.6x compiled "
        "fp32 on CPUs with bf16 units.",
    ),
    loader_workers: int | None = typer.Option(
        None,
        "--loader-workers",
        help="Processes that decode the next batches while one trains (an image folder: "
        "decoding is the cost); default 0. The same weights either way.",
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
    quiet: bool = Quiet,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
    device: str | None = Device,
) -> None:
    """Train a teacher; save a checkpoint after every epoch."""
    from infoutil.training.teacher import train_teacher

    run = _run(data_root, cache_dir, threads, device, quiet)
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
            "loader_workers": loader_workers,
        },
    )

    meta = train_teacher(
        cfg, out, run=run, resume=resume, stop_after=stop_after, reschedule=reschedule
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
    dataset: str | None = dataset_option("Measure on (default: the teacher's own)"),
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
) -> None:
    """Measure a teacher's top-1 accuracy on the real test set."""
    from infoutil.data import load_dataset
    from infoutil.data.sources import RESIZABLE, dataset_info
    from infoutil.evaluation.metrics import accuracy
    from infoutil.io.checkpoint import load_teacher

    _run(threads=threads)
    t = load_teacher(teacher)
    name = dataset or t.info.name
    # a folder of images (or an ImageNet subset) is resized to the size the teacher expects
    resizable = name.startswith("imagefolder:") or name in RESIZABLE
    size = t.info.image_size if resizable else None
    expected = dataset_info(name, data_root, size, cache_dir)
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
    arch: str = typer.Option(..., "--arch", help=f"The weights' architecture: {_MODELS}."),
    out: Path = typer.Option(..., "--out"),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="The classes the weights were trained on, in their order: imagenet-1k (1,000 "
        "wnids, ImageNet's mean and std) or a dataset name (its order; default: --dataset).",
    ),
    dataset: str | None = dataset_option(
        "Measure the teacher's test accuracy on (an ImageNet-1K teacher on a wnid subset such "
        "as imagewoof: its logits at the subset's classes)"
    ),
    layout: str = typer.Option(
        "auto", "--layout", help="Parameter names: auto, torchvision, timm, rded or infoutil."
    ),
    class_order: Path | None = typer.Option(
        None,
        "--class-order",
        help="A file listing the weights' classes in their order, one per line (like "
        "Tiny-ImageNet's wnids.txt), where it is not the dataset's sorted order.",
    ),
    image_size: int | None = ImageSize,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
) -> None:
    """Make an infoutil teacher from published weights (torchvision, timm, RDED); no code in
    the file runs, and neither torchvision nor timm is needed."""
    from infoutil.training.importer import import_teacher

    run = _run(data_root, cache_dir, threads)
    classes = classes or dataset
    if classes is None:
        raise UserError("teacher import: pass --classes imagenet-1k, or --classes/--dataset NAME")
    meta = import_teacher(
        weights, arch, out, classes=classes, dataset=dataset, layout=layout,
        image_size=image_size, class_order=class_order, run=run,
    )  # fmt: skip
    acc, info = meta["test_accuracy"], meta["dataset"]
    measured = f", test accuracy on {dataset} {acc:.4f}" if acc is not None else ""
    typer.echo(
        f"imported {weights} ({meta['imported_from']['layout']} layout) as {arch}, "
        f"{len(info['class_names'])} classes of {info['name']}{measured} -> {out}"
    )


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
    dataset: str | None = Dataset,
    teacher: str = typer.Option(
        ...,
        "--teacher",
        help="Teacher checkpoint (DIR, DIR@EPOCH or FILE.safetensors) that scores candidates.",
    ),
    ipc: int | None = typer.Option(None, "--ipc", help="Images per class (required)."),
    out: Path = typer.Option(..., "--out"),
    label_teacher: str | None = typer.Option(
        None,
        "--label-teacher",
        help="Checkpoint for the soft labels (default: --teacher), "
        "e.g. an early epoch DIR@10 as the paper does at IPC 1 and 10.",
    ),
    seed: int | None = Seed,
    candidates_per_class: int | None = typer.Option(
        None,
        "--candidates-per-class",
        help=f"The seeded pool of real images per class that methods choose from (default "
        f"{_default(DistillConfig, 'candidates_per_class')}).",
    ),
    factor: int | None = typer.Option(
        None,
        "--factor",
        help="Patches per side of a distilled image (default: 1, whole images; rded and "
        "--recipe paper: 1 up to 64 px, else 2).",
    ),
    estimator: str | None = typer.Option(
        None,
        "--estimator",
        help="Shapley estimator: leverage-gp (default), leverage, kernel, permutation or exact; "
        "only where maps are computed (--factor 2 or --recipe paper).",
    ),
    budget: int | None = typer.Option(
        None,
        "--budget",
        help="Shapley evaluations per candidate (default 512); only where maps are computed "
        "(--factor 2 or --recipe paper).",
    ),
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
    device: str | None = Device,
) -> None:
    """Distill a dataset into IPC images per class, written to --out."""
    from infoutil.methods import distill as run_distill

    run = _run(data_root, cache_dir, threads, device, quiet)
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

    given = [f for f, v in (("--estimator", estimator), ("--budget", budget)) if v is not None]
    if given:
        _say_if_no_maps(cfg, run, given)
    run_distill(
        cfg, teacher, out, label_teacher=label_teacher, run=run, resume=resume, overwrite=overwrite
    )


def _say_if_no_maps(cfg, run: RunContext, flags: list[str]) -> None:
    """One line where Shapley options were given to a distil that computes no map."""
    from infoutil.data.sources import dataset_info
    from infoutil.methods.infoutil import computes_maps
    from infoutil.runtime import warn

    info = dataset_info(cfg.dataset, run.data_root, cfg.image_size, run.cache_dir)
    size = info.image_size if info is not None else 32
    if not computes_maps(cfg, size):
        what = "the whole image" if cfg.method == "infoutil" else f"{cfg.method}'s own crops"
        verb = "changes" if len(flags) == 1 else "change"
        warn(
            f"{' and '.join(flags)} {verb} nothing here: this distil keeps {what} and computes "
            "no Shapley map (InfoUtil with --factor 2 or --recipe paper does)"
        )


@app.command()
def evaluate(
    distilled: Path = typer.Argument(..., help="A distilled set written by 'infoutil distill'."),
    out: Path = typer.Option(..., "--out"),
    student: str = typer.Option("convnet3", "--student", help=f"The student: {_MODELS}."),
    teacher: str | None = typer.Option(
        None, "--teacher", help="Teacher that relabels online (default: the set's label teacher)."
    ),
    protocol: str = typer.Option(
        "rded",
        "--protocol",
        help="The label regime: rded (the teacher relabels online), static (the set's stored "
        "soft labels) or hard (its hard labels, cross-entropy, lr chosen on the validation "
        "split); several, comma-separated, write one evaluation each to OUT/<protocol>/.",
    ),
    split: str = typer.Option(
        "test",
        "--split",
        help="Measure on 'test' (the real test set, the reported figure) or 'val' (the "
        "validation split the set was distilled without; for choosing recipes).",
    ),
    epochs: int | None = typer.Option(
        None,
        "--epochs",
        help=f"Student epochs (default {_default(ProtocolConfig, 'epochs')}, RDED's).",
    ),
    steps: int | None = typer.Option(
        None,
        "--steps",
        help="Fix the optimizer steps instead of the epochs (budgets that compare across IPC).",
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="The student's learning rate (default: RDED's, 0.001; hard labels: chosen on the "
        "validation split from 0.001, 0.005, 0.01).",
    ),
    seeds: int = typer.Option(1, "--seeds", help="Train this many students (seeds 0..N-1)."),
    students_from: Path | None = typer.Option(
        None,
        "--students-from",
        help="Another evaluation's --out: each seed whose student it kept, trained the same way "
        "on the same set, is measured here instead of trained again (its val students give the "
        "test row).",
    ),
    autoaugment: bool | None = typer.Option(None, "--autoaugment/--no-autoaugment"),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="fp32 (default) or bf16: the student's and the online teacher's forwards in "
        "bf16 autocast (fp32 weights); opt-in, check it against fp32 first.",
    ),
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
    device: str | None = Device,
) -> None:
    """Train fresh students on a distilled set; report last-epoch top-1 on the real test set."""
    from infoutil.config import PROTOCOLS
    from infoutil.evaluation.run import evaluate as run_evaluate

    run = _run(data_root, cache_dir, threads, device, quiet)
    names = [p.strip() for p in protocol.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown or not names:
        raise UserError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, not {seeds}")
    flags = {"epochs": epochs, "steps": steps, "lr": lr, "autoaugment": autoaugment,
             "compile": compile_model, "precision": precision}  # fmt: skip
    from infoutil.report.plots import plot_results_curves

    for name in names:  # each regime is its own evaluation; the cache serves the data to all
        proto = _config(ProtocolConfig, config, flags, base=PROTOCOLS[name].model_dump())
        where = out if len(names) == 1 else out / name
        results = run_evaluate(
            distilled, where, student=student, teacher=teacher, protocol=proto,
            seeds=list(range(seeds)), run=run, resume=resume, overwrite=overwrite,
            students_from=students_from if len(names) == 1 else _per_regime(students_from, name),
            split=split,
        )  # fmt: skip
        plot_results_curves(results, where / "curve.png")  # beside it, not part of it


def _per_regime(students_from: Path | None, name: str) -> Path | None:
    """``--students-from`` for one of several regimes: its own subfolder where there is one."""
    if students_from is None:
        return None
    return students_from / name if (students_from / name).is_dir() else students_from


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Evaluation outputs (or folders holding them)."),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Collect results.json files into one table (markdown, CSV) and accuracy-vs-IPC plots."""
    from infoutil.evaluation.compare import compare as run_compare
    from infoutil.evaluation.compare import markdown_table
    from infoutil.report.plots import plot_compare

    rows = run_compare(runs, out)
    plot_compare(rows, out)
    typer.echo(markdown_table(rows), nl=False)
    typer.echo(f"-> {out}/results.md, results.csv, regimes.md (one column a label regime)")


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
    budget: int | None = typer.Option(
        None,
        "--budget",
        help="Shapley evaluations per candidate; the demo's default recipe computes no map, "
        "so this changes nothing (kept for old scripts).",
    ),
    quiet: bool = Quiet,
    data_root: str | None = DataRoot,
    cache_dir: str | None = CacheDir,
    threads: int | None = Threads,
) -> None:
    """Distill Fashion-MNIST (IPC 10) with infoutil and rded, evaluate both, write a report."""
    from infoutil.demo import run_demo

    run = _run(data_root, cache_dir, threads, quiet=quiet)
    if budget is not None:
        from infoutil.runtime import warn

        warn("--budget changes nothing in the demo: its recipe keeps whole images, no map")
    run_demo(out, run=run, epochs=epochs, seeds=seeds, candidates_per_class=candidates_per_class)


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
