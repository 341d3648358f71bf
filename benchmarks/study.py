"""The study of InfoUtil's free choices (issue "InfoUtil that beats RDED"), on the validation
split, and the final grid on the test set with the same distilled sets.

Each variant is a method and a set of named options; all share the teacher, the candidate pool,
the cached attribution maps and the protocol. Every variant is distilled with the validation
split held out and measured on it (``--split val``, the default); the choosing is done there.
``--split test`` measures the same sets on the test set, for the final grid only. Finished
runs are skipped, so the study can be stopped and continued; ``--workers`` runs that many jobs
at once, one thread each.

    python benchmarks/study.py --dataset cifar10 --teacher benchmarks/teachers/cifar10-convnet3 \
        --ipc 10 --val-per-class 500 --epochs 100 --seeds 2 --variants paper rded random \
        --work /tmp/study --results benchmarks/results/study/cifar10

Per variant the results folder gets ``results.json`` (the method renamed ``infoutil:VARIANT``)
and ``diagnostics.json`` (what the teacher thinks of the selected patches); ``table.md`` and
``table.json`` put them side by side.
"""

from __future__ import annotations

import argparse
import json
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

# name -> (method, options). Options are DistillConfig keys; absent keys keep the defaults.
PAPER = {"recipe": "paper"}
BASELINES = {
    "random": ("random", {}),
    "rded": ("rded", {}),
    "herding": ("herding", {}),
    "kcenter": ("kcenter", {}),
}


def infoutil(**options) -> tuple[str, dict]:
    """An InfoUtil variant: the paper's recipe with ``options`` changed."""
    out = {"recipe": "paper"}
    for section in ("informativeness", "utility"):
        if section in options:
            out[section] = options.pop(section)
    out.update(options)
    return "infoutil", out


def window(kernel: int | None = None, factor: int | None = None, **rest) -> dict:
    inf = {} if kernel is None else {"pool_kernel": kernel}
    inf.update(rest.pop("informativeness", {}))
    out = {"informativeness": inf, **rest}
    if factor is not None:
        out["factor"] = factor
    return out


def _variants() -> dict[str, tuple[str, dict]]:
    v = dict(BASELINES)
    # other draws of the pool (and of random's images): how much the draw alone moves a row
    for seed in (1, 2):
        v[f"random-seed{seed}"] = ("random", {"seed": seed})
        v[f"rded-seed{seed}"] = ("rded", {"seed": seed})
    v["paper"] = infoutil()
    # the defaults the study chose (config.py): the same set as k4-cluster-best (a test checks)
    v["default"] = ("infoutil", {"recipe": "default"})
    # one factor at a time from the paper's text
    v["k3"] = infoutil(**window(3))
    v["k4"] = infoutil(**window(4))
    v["f2k2"] = infoutil(**window(2, factor=2))  # four native quarter crops per image
    v["alpha0"] = infoutil(informativeness={"alpha": 0.0})
    v["alpha1"] = infoutil(informativeness={"alpha": 1.0})
    v["noise-global"] = infoutil(informativeness={"noise_std": "global"})
    v["one-per-source"] = infoutil(utility={"per_source": "best"})
    for rule in ("lowest", "highest_correct", "quantile", "strata", "badge", "cluster"):
        v[rule.replace("_", "-")] = infoutil(utility={"select": rule})
    v["early-utility"] = infoutil(utility={"teacher_epoch": 2})
    v["gradcam"] = infoutil(informativeness={"attribution": "gradcam"})
    v["random-crop"] = infoutil(informativeness={"attribution": "random"})
    # the factorial over the factors that interact: window x rule x crops per source
    # factor 2 at low resolution: four cells of 16 (14) px per image; f2k2 puts native
    # quarter crops in them, f2k3 and f2k4 larger windows scaled down (IDC's multi-formation)
    v["rded-f2"] = ("rded", {"factor": 2})
    v["random-f2"] = ("random", {"factor": 2})
    for kname, kw in (
        ("k2", window(2)),
        ("k3", window(3)),
        ("k4", window(4)),
        ("f2k2", window(2, factor=2)),
        ("f2k3", window(3, factor=2)),
        ("f2k4", window(4, factor=2)),
    ):
        for rule in (
            "highest",
            "lowest",
            "highest_correct",
            "quantile",
            "strata",
            "badge",
            "cluster",
        ):
            for per_source in ("all", "best"):
                name = f"{kname}-{rule.replace('_', '-')}-{per_source}"
                options = json.loads(json.dumps(kw))
                options["utility"] = {"select": rule, "per_source": per_source}
                v[name] = infoutil(**options)
    # around the leaders: other pool draws, the attribution controls where a crop can move,
    # and the utility at an earlier checkpoint
    for name in ("k4-cluster-best", "k4-lowest-best"):
        for seed in (1, 2):
            method, options = v[name]
            v[f"{name}-seed{seed}"] = (method, {**options, "seed": seed})

    def changed(name: str, section: str, **values) -> tuple[str, dict]:
        method, options = v[name]
        return method, {**options, section: {**options[section], **values}}

    for attribution in ("gradcam", "random"):
        v[f"k3-cluster-best-{attribution}"] = changed(
            "k3-cluster-best", "informativeness", attribution=attribution
        )
    v["k4-cluster-medoid"] = changed("k4-cluster-best", "utility", cluster_pick="medoid")
    v["k4-cluster-best-early-utility"] = changed("k4-cluster-best", "utility", teacher_epoch=2)
    v.update(_high_resolution_variants())
    return v


# the default above 64 px as the high-resolution study found it: native quarters (factor 2) at
# the Shapley map's argmax. Pinned, so that its controls keep their meaning whatever the
# default becomes (the study moved it to whole images, factor 1: docs/method.md)
DEFAULT_F2 = {"factor": 2, "informativeness": {"attribution": "shapley"}}


def default(**sections) -> tuple[str, dict]:
    """The factor-2 Shapley default (``DEFAULT_F2``) with ``sections`` (informativeness,
    utility, or top-level keys) changed."""
    from infoutil.config import merge

    return "infoutil", merge({"recipe": "default", **DEFAULT_F2}, sections, keep_none=True)


def _high_resolution_variants() -> dict[str, tuple[str, dict]]:
    """Issue "InfoUtil at high resolution" (ImageWoof, 128 px, factor 2): the controls of the
    crop's position under our utility rule (the paper's Tables 6 and 8 asked with our rule),
    the rules on the Shapley crops, and the ideas that could make the map matter more."""
    v = {
        # the default as it stood when the study began (its first rows ran as "default")
        "default-f2": default(),
        # random real images cut to four random native quarters, stitched
        "random-windows": ("random", {"random": {"patches": "windows"}}),
        # where the crop goes
        "default-random-window": default(informativeness={"attribution": "random"}),
        "default-gradcam": default(informativeness={"attribution": "gradcam"}),
        "default-rded-crop": default(informativeness={"attribution": "rded"}),
        "default-f1": default(factor=1),  # whole images, one per distilled image
        # the map's own knobs
        "default-grid8": default(informativeness={"grid": 8}),
        "default-logit": default(informativeness={"target": "logit"}),
        "default-blur": default(informativeness={"baseline": "blur"}),
        "default-mean": default(informativeness={"baseline": "mean"}),
        "default-k3": default(informativeness={"pool_kernel": 3}),  # 96 px windows, scaled
        "default-all-sources": default(utility={"per_source": "all"}),
    }
    for rule in ("highest", "lowest", "strata", "badge"):  # cluster is the default's
        v[f"default-{rule}"] = default(utility={"select": rule})
    # issue "A strong teacher at 128 px": the paper's Table 6 in its own terms, at factor 2:
    # RDED's loss scoring on random crops, and the gradient norm on random crops (RDED's
    # squares) or on attribution crops (the Shapley map), each under the paper's rule (the
    # highest norms, every crop competing) and ours (the cluster rule, one crop per source)
    paper_rule = {"select": "highest", "per_source": "all"}
    ours = {"select": "cluster", "per_source": "best"}
    v["t6-rded"] = ("rded", {"factor": 2})
    for crops, attribution in (("random", "rded"), ("shapley", "shapley")):
        for rule_name, rule in (("highest", paper_rule), ("cluster", ours)):
            v[f"t6-gradnorm-{crops}-{rule_name}"] = default(
                informativeness={"attribution": attribution}, utility=rule
            )
    # issue "Three label regimes": the difficulty of the kept whole images (the default is
    # the easiest of each feature group); CAD-Prune argues the best depends on the budget
    v["whole-hardest"] = ("infoutil", {"recipe": "default", "utility": {"select": "highest"}})
    for q in (0.25, 0.5, 0.75):
        v[f"whole-quantile{int(100 * q)}"] = (
            "infoutil",
            {"recipe": "default", "utility": {"select": "quantile", "quantile": q}},
        )
    return v


def with_map_engine(method: str, options: dict, engine: dict) -> dict:
    """``engine`` (informativeness keys that change how maps are computed, not what they
    estimate: precision, compile, early stop) applied to an InfoUtil variant."""
    if method != "infoutil" or not engine:
        return options
    return {**options, "informativeness": {**options.get("informativeness", {}), **engine}}


VARIANTS = _variants()


def run_one(job: dict) -> dict:
    """Distill one variant (if not done) and measure it on the job's split."""
    import torch

    torch.set_num_threads(1)
    from infoutil.config import PROTOCOLS, DistillConfig
    from infoutil.pipeline import Cell, run_cell
    from infoutil.runtime import RunContext

    name, ipc, work = job["variant"], job["ipc"], Path(job["work"])
    method, options = VARIANTS[name]
    options = with_map_engine(method, options, job["map_engine"])
    labels = f"-labels-{job['label_name']}" if job["label_teacher"] else ""
    tag = f"{name}-ipc{ipc}{labels}"
    cfg = DistillConfig(
        method=method,
        dataset=job["dataset"],
        ipc=ipc,
        candidates_per_class=job["candidates_per_class"],
        val_per_class=job["val_per_class"],
        val_seed=job["val_seed"],
        **options,
    )
    regime = job.get("protocol", "rded")
    update = {"epochs": job["epochs"], "compile": job["compile"]}
    if job.get("precision", "fp32") != "fp32":
        update["precision"] = job["precision"]
    if regime == "hard" and job.get("hard_lr") is not None:
        update["lr"] = job["hard_lr"]
    protocol = PROTOCOLS[regime].model_copy(update=update)
    split = job["split"]
    epochs = f"-e{job['epochs']}" if job["epochs"] != 100 else ""
    epochs += "" if regime == "rded" else f"-{regime}"
    epochs += "" if job.get("precision", "fp32") == "fp32" else f"-{job['precision']}"
    # the test row measures the students that the validation row trained, where they match
    on_val = work / "eval" / f"{tag}-val{epochs}"
    cell = Cell(
        tag, cfg, job["teacher"], job["label_teacher"], job["student"], protocol, job["seeds"],
        split, evaluation=f"{tag}-{split}{epochs}",
        students_from=on_val if split != "val" and on_val.is_dir() else None,
        label=name if method != "infoutil" else f"infoutil:{name}",
        extra={"variant_options": options},
    )  # fmt: skip
    record = run_cell(cell, work, RunContext(data_root=job["data_root"], progress=False),
                      Path(job["results"]))  # fmt: skip
    diag = json.loads((work / "distilled" / tag / "manifest.json").read_text())["diagnostics"]
    sel = diag["selected"]["overall"]
    print(
        f"{cell.eval_name}: {100 * record['mean']:.2f} +- {100 * record['std']:.2f} | teacher "
        f"top-1 on selected {100 * sel['teacher_top1']:.1f}%, prob "
        f"{sel['mean_true_class_prob']:.2f}",
        flush=True,
    )
    return {"variant": name, "ipc": ipc, "mean": record["mean"], "std": record["std"]}


def table(results: Path) -> list[dict]:
    """Every finished variant with its accuracy and its diagnostics, best first."""
    rows = []
    for f in sorted(results.glob("*/results.json")):
        r = json.loads(f.read_text())
        diag_file = f.parent / "diagnostics.json"
        diag = json.loads(diag_file.read_text()) if diag_file.is_file() else None
        sel = diag["selected"]["overall"] if diag else {}
        stats_file = f.parent / "run_stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        rows.append(
            {
                "run": f.parent.name,
                "method": r["method"],
                "ipc": r["ipc"],
                "protocol": r.get("protocol", "rded"),
                "lr": r.get("lr"),
                "split": r.get("split"),
                "seeds": len(r["seeds"]),
                "mean": r["mean"],
                "std": r["std"],
                "teacher_top1": sel.get("teacher_top1"),
                "true_class_prob": sel.get("mean_true_class_prob"),
                "distinct_sources": sel.get("distinct_sources"),
                "patches": sel.get("patches"),
                "mean_area": sel.get("mean_area"),
                "noise_free_share": sel.get("noise_free_share"),
                # the distil's seconds as this run measured them (a stage read from the score
                # cache counts only its loading: the cost of maps is their first run's)
                "distill_seconds": stats.get("total_seconds"),
                "stage_seconds": {x["stage"]: x["seconds"] for x in stats.get("stages", [])},
                "options": r.get("variant_options"),
            }
        )
    rows.sort(key=lambda r: (r["protocol"], r["ipc"], -r["mean"]))
    return rows


def markdown(rows: list[dict]) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = [
        "| run | split | seeds | top-1 (%) | teacher top-1 on selected (%) | true-class prob | "
        "sources / patches | area (%) | noise-free (%) | distil (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        prob = "-" if r["true_class_prob"] is None else f"{r['true_class_prob']:.2f}"
        lines.append(
            f"| {r['run']} | {r['split']} | {r['seeds']} | "
            f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f} | "
            f"{pct(r['teacher_top1'])} | {prob} | {r['distinct_sources']} / {r['patches']} | "
            f"{pct(r['mean_area'])} | {pct(r['noise_free_share'])} | "
            f"{'-' if r.get('distill_seconds') is None else round(r['distill_seconds'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset")
    ap.add_argument("--teacher")
    ap.add_argument("--label-teacher", default=None)
    ap.add_argument("--label-name", default="early", help="the label teacher's name in run tags")
    ap.add_argument(
        "--split",
        default="val",
        choices=["val", "test"],
        help="val to choose; test only for the final grid, once the recipe is fixed",
    )
    ap.add_argument("--ipc", type=int, nargs="+", default=[10])
    ap.add_argument("--variants", nargs="+", default=None, help="default: the baselines, paper")
    ap.add_argument("--val-per-class", type=int, default=500)
    ap.add_argument("--val-seed", type=int, default=0)
    ap.add_argument("--candidates-per-class", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--student", default="convnet3", help="the student architecture")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--map-engine",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="informativeness keys for every InfoUtil variant that change how its maps are "
        "computed, not what they estimate (precision=bf16 compile=true early_stop_z=1.5)",
    )
    ap.add_argument("--compile", action="store_true", help="students through torch.compile")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="the students' autocast (bf16 runs are named -bf16)")  # fmt: skip
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--work")
    ap.add_argument("--results", required=True)
    ap.add_argument(
        "--protocols", default="rded", help="label regimes, comma-separated: rded, static, hard"
    )
    ap.add_argument(
        "--hard-lr",
        type=float,
        default=None,
        help="the hard regime's lr (default: chosen on the validation split for each set)",
    )
    ap.add_argument("--list", action="store_true", help="print the variants and stop")
    ap.add_argument("--table-only", action="store_true", help="rebuild the tables and stop")
    args = ap.parse_args()
    if args.list:
        for name, (method, options) in VARIANTS.items():
            print(name, method, json.dumps(options, sort_keys=True))
        return
    if args.table_only:
        write_tables(Path(args.results))
        return
    if None in (args.dataset, args.teacher, args.work):
        ap.error("--dataset, --teacher and --work are required to run variants")
    names = args.variants or [*BASELINES, "paper"]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; see --list")
    base = {
        k: getattr(args, k)
        for k in (
            "dataset",
            "teacher",
            "label_teacher",
            "label_name",
            "split",
            "val_per_class",
            "val_seed",
            "candidates_per_class",
            "epochs",
            "student",
            "seeds",
            "data_root",
            "work",
            "results",
        )
    }
    base["compile"] = args.compile
    base["precision"] = args.precision
    base["hard_lr"] = args.hard_lr
    base["map_engine"] = {
        k: yaml.safe_load(v) for k, v in (e.split("=", 1) for e in args.map_engine)
    }
    jobs = [
        dict(base, variant=n, ipc=ipc, protocol=p)
        for p in args.protocols.split(",")
        for ipc in args.ipc
        for n in names
    ]
    if args.workers > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            list(pool.map(run_one, jobs))
    else:
        for job in jobs:
            run_one(job)
    write_tables(Path(args.results))


def grid_markdown(rows: list[dict]) -> str:
    """The test-split runs as a grid: one line per variant, label teacher and epochs; one
    column per IPC."""
    cells: dict[str, dict[int, str]] = {}
    for r in rows:
        pattern = r"(.+)-ipc(\d+)(-labels-\w+)?-test(-e\d+)?(-hard|-static)?(-bf16)?"
        m = re.fullmatch(pattern, r["run"])
        if not m:
            continue
        name, ipc, labels, epochs, regime, bf16 = m.groups()
        line = name + (f", labels {labels.removeprefix('-labels-')}" if labels else "")
        line += f", {epochs.removeprefix('-e')} epochs" if epochs else ""
        line += f", {regime.removeprefix('-')} labels" if regime else ""
        line += ", bf16 students" if bf16 else ""
        cells.setdefault(line, {})[int(ipc)] = (
            f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f} ({r['seeds']})"
        )
    if not cells:
        return ""
    ipcs = sorted({i for c in cells.values() for i in c})
    lines = [
        "| variant | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
        "|---|" + "---|" * len(ipcs),
    ]
    for line, by_ipc in cells.items():
        lines.append(f"| {line} | " + " | ".join(by_ipc.get(i, "") for i in ipcs) + " |")
    return "\n".join(lines) + "\n"


def write_tables(results: Path) -> None:
    rows = table(results)
    (results / "table.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    (results / "table.md").write_text(markdown(rows))
    (results / "grid.md").write_text(grid_markdown(rows))
    print(markdown(rows))
    print(grid_markdown(rows))


if __name__ == "__main__":
    main()
