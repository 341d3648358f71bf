"""``infoutil report RUN_DIR``: one static ``report.html`` with its figures beside it.

RUN_DIR is a distilled set, an evaluation, or any folder holding several of them (the demo's).
The report shows, for each distilled set: the images per class; for InfoUtil, sample candidates
with their Shapley heatmap, pooled map and the five crop boxes (the noise-free one marked), and
the gradient-norm distribution per class with the selection threshold; the run's config, teacher,
seed, and time and forward passes per stage. With evaluations: the accuracy table and a plot
against IPC per method (mean +- std). Every figure is also a PNG under ``report/figures/``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from infoutil.atomic import atomic_write_bytes
from infoutil.data.imagenet import display_name
from infoutil.errors import UserError
from infoutil.evaluation.compare import (
    collect_results,
    format_accuracy,
    markdown_table,
    regime_markdown,
    regime_rows,
    summary_rows,
)
from infoutil.io.distilled import load_distilled
from infoutil.report.plots import (
    _plt,
    image_grid,
    plot_accuracy_vs_ipc,
    plot_results_curves,
    save_figure,
)
from infoutil.selection.diagnostics import summary_line
from infoutil.selection.diagnostics import warning as diagnostics_warning

CSS = """
.warn{color:#a33}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em}table{border-collapse:collapse;margin:1em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f4f4f4}
img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}
figcaption{color:#555;font-size:.9em}code,pre{background:#f6f6f6;font-size:.85em}
pre{padding:.6em;overflow-x:auto;max-height:28em}.note{color:#555}
nav a{margin-right:1em}
"""


def _find(run_dir: Path, name: str) -> list[Path]:
    if (run_dir / name).is_file():
        return [run_dir]
    return sorted(p.parent for p in run_dir.rglob(name) if "report" not in p.parts)


# per-class figures show at most this many classes (the first, in class order): a figure of
# 1,000 rows of 224 px images takes gigabytes to draw, and nobody can read it
FIGURE_CLASSES = 20


def _first_classes(names: list[str]) -> tuple[list[str], str]:
    """(the classes a per-class figure shows, a note for its title where some are left out)."""
    if len(names) <= FIGURE_CLASSES:
        return names, ""
    return names[:FIGURE_CLASSES], f" (the first {FIGURE_CLASSES} of {len(names)} classes)"


def distilled_grid_figure(ds, path: Path) -> None:
    """Rows: classes (up to ``FIGURE_CLASSES``); columns: that class's images (up to 10)."""
    plt = _plt()
    names, note = _first_classes([display_name(c) for c in ds.info.class_names])
    per_class = [torch.nonzero(ds.labels == c).flatten()[:10] for c in range(len(names))]
    cols = max(len(p) for p in per_class)
    rows = [image_grid(ds.images[p], cols) for p in per_class]
    fig, axes = plt.subplots(len(names), 1, figsize=(1.0 * cols + 1.6, 1.05 * len(names)))
    axes = [axes] if len(names) == 1 else axes
    for ax, grid, name in zip(axes, rows, names, strict=True):
        img = grid.permute(1, 2, 0).numpy()
        ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    axes[0].set_title(
        f"{ds.method}: {len(ds)} images, {ds.ipc} per class, factor {ds.factor}{note}",
        fontsize=10,
    )
    fig.subplots_adjust(hspace=0.08)
    save_figure(fig, path)


def candidates_figure(scores: dict, info, path: Path, max_rows: int = 10) -> None:
    """Per sampled candidate: image + Shapley heatmap, pooled map with its argmax, the crops."""
    plt = _plt()
    sample = scores["sample"].tolist()[: max_rows * 2][::2][:max_rows]  # one per class
    rows = len(sample)
    fig, axes = plt.subplots(rows, 3, figsize=(7.2, 2.3 * rows))
    axes = axes.reshape(rows, 3)
    for r, pos in enumerate(sample):
        k = scores["sample"].tolist().index(pos)
        img = scores["sample_images"][k].permute(1, 2, 0).numpy()
        img = img[:, :, 0] if img.shape[2] == 1 else img
        attribution = next(a for a in ("shapley", "fastshap", "gradcam", "random") if a in scores)
        smap = scores[attribution][pos].numpy()
        pooled = scores["pooled"][pos].numpy()
        size = img.shape[0]
        label = display_name(info.class_names[int(scores["candidate_labels"][pos])])
        ax = axes[r, 0]
        ax.imshow(img, cmap="gray")
        lim = max(abs(smap).max(), 1e-12)
        ax.imshow(
            smap,
            cmap="RdBu_r",
            alpha=0.55,
            vmin=-lim,
            vmax=lim,
            extent=(-0.5, size - 0.5, size - 0.5, -0.5),
            interpolation="nearest",
        )
        ax.set_title(f"{label}: {attribution} map", fontsize=8)
        ax = axes[r, 1]
        im = ax.imshow(pooled, cmap="viridis")
        i, j = divmod(int(pooled.argmax()), pooled.shape[1])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_title("pooled map (red: argmax)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax = axes[r, 2]
        ax.imshow(img, cmap="gray")
        boxes = scores["boxes"][pos].tolist()
        norms = scores["grad_norm"][pos].tolist()
        chosen = scores["selected"][pos].tolist()
        for c, (top, left, h, w) in enumerate(boxes):
            clean = c == len(boxes) - 1
            ax.add_patch(
                plt.Rectangle(
                    (left - 0.5 + c * 0.4, top - 0.5 + c * 0.4),
                    w,
                    h,
                    fill=False,
                    ec="red" if clean else "orange",
                    lw=2.5 if clean else 1.2,
                    ls="-" if clean else "--",
                )
            )
        picked = sum(chosen)
        ax.set_title(
            f"5 crops (red: noise-free); {picked} selected\n"
            f"grad norms {', '.join(f'{n:.1f}' for n in norms if n == n)}",
            fontsize=7,
        )
        for a in axes[r]:
            a.set_xticks([])
            a.set_yticks([])
    # room for the crops' two-line titles, which otherwise run into the row above
    fig.subplots_adjust(hspace=0.55, wspace=0.35)
    save_figure(fig, path)


def grad_norm_figure(scores: dict, info, path: Path) -> None:
    """Histogram of crop gradient norms per class; the line is the selection threshold."""
    plt = _plt()
    norms = scores["grad_norm"]
    cls = scores["candidate_labels"][:, None].expand_as(norms)
    sel = scores["selected"]
    shown, note = _first_classes(list(info.class_names))
    n = len(shown)
    cols = min(5, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), squeeze=False)
    for c in range(n):
        ax = axes[c // cols][c % cols]
        mine = norms[(cls == c) & ~torch.isnan(norms)]
        picked = norms[(cls == c) & sel]
        ax.hist(mine.numpy(), bins=30, color="#8aa")
        if len(picked):
            ax.axvline(float(picked.min()), color="red", lw=1.5)
        ax.set_title(display_name(info.class_names[c]), fontsize=8)
        ax.tick_params(labelsize=7)
    for c in range(n, rows * cols):
        axes[c // cols][c % cols].axis("off")
    fig.suptitle(
        f"crop gradient norms per class (red: selection threshold, keep the right){note}",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)


def diagnostics_figure(diag: dict, path: Path) -> None:
    """Per class: teacher top-1 on the selected patches against the pool; and which classes
    the teacher predicts for the selected patches."""
    plt = _plt()
    names, note = _first_classes(diag["class_names"])
    sel, pool = diag["selected"]["per_class"], diag["pool"]["per_class"]
    x = torch.arange(len(names)).numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.2))
    top = [100 * sel[n].get("teacher_top1", 0) for n in names]
    a.bar(x - 0.2, top, 0.4, label="selected", color="#c44")
    a.bar(
        x + 0.2,
        [100 * pool[n].get("teacher_top1", 0) for n in names],
        0.4,
        label="pool",
        color="#8aa",
    )
    a.set_ylabel("teacher top-1 (%)")
    a.set_ylim(0, 100)
    a.set_title(f"the teacher on each class's patches{note}", fontsize=9)
    a.legend(fontsize=7)
    predicted = diag["selected"]["overall"]["predicted"][: len(names)]
    b.bar(x, predicted, color="#c44")
    b.set_title(f"classes the teacher predicts for the selected patches{note}", fontsize=9)
    for ax in (a, b):
        ax.set_xticks(x)
        ax.set_xticklabels([display_name(n) for n in names], rotation=45, ha="right", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def diagnostics_table(diag: dict) -> str:
    """Selected against pool, overall and per class."""
    cols = [
        ("patches", "patches", str),
        ("teacher top-1", "teacher_top1", lambda v: f"{100 * v:.1f}%"),
        ("true-class prob", "mean_true_class_prob", lambda v: f"{v:.3f}"),
        ("distinct sources", "distinct_sources", str),
        ("mean area", "mean_area", lambda v: f"{100 * v:.0f}%"),
        ("noise-free", "noise_free_share", lambda v: f"{100 * v:.0f}%"),
    ]
    head = "".join(f"<th>{c}</th>" for c, _, _ in cols)
    rows = []
    groups = [("all classes", "overall")] + [(display_name(n), n) for n in diag["class_names"]]
    for label, key in groups:
        for which in ("selected", "pool"):
            d = diag[which]["overall"] if key == "overall" else diag[which]["per_class"][key]
            cells = "".join(f"<td>{fmt(d[k]) if k in d else '-'}</td>" for _, k, fmt in cols)
            rows.append(f"<tr><th>{html.escape(label)}, {which}</th>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _table(d: dict) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in d.items()
    )
    return f"<table>{rows}</table>"


def _figure(rel: str, caption: str) -> str:
    return (
        f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` and its PNG figures; returns the HTML path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    out = Path(out) if out else run_dir / "report"
    figs = out / "figures"
    sets = _find(run_dir, "manifest.json")
    evals = _find(run_dir, "results.json")
    if not sets and not evals:
        raise UserError(
            f"{run_dir}: holds no distilled set (manifest.json) or evaluation (results.json)"
        )
    parts = [f"<h1>infoutil report: {html.escape(run_dir.name)}</h1>"]
    summary = _summary(evals)
    if summary:
        parts.append(summary)
    nav = []
    if evals:
        nav.append('<a href="#results">results</a>')
        parts += _results_section(evals, figs)
    for d in sets:
        link, section = _set_section(d, figs)
        nav.append(link)
        parts += section
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>infoutil report</title>"
        f"<style>{CSS}</style></head><body><nav>{''.join(nav)}</nav>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    atomic_write_bytes(out / "report.html", page.encode())
    return out / "report.html"


def _results_section(evals: list[Path], figs: Path) -> list[str]:
    """The table of every evaluation, accuracy against IPC, and each run's curves."""
    records = collect_results(evals)
    rows = summary_rows(records)
    body = [
        '<h2 id="results">Evaluation results</h2>',
        '<p class="note">Top-1 on the real test set, the last epoch of each student, '
        "mean +- std over seeds.</p>",
        _md_table_to_html(markdown_table(rows)),
    ]
    groups = sorted({(r["dataset"], r["student"]) for r in rows})
    for dataset, student in groups:
        subset = [
            r
            for r in rows
            if (r["dataset"], r["student"]) == (dataset, student) and r["ipc"] is not None
        ]
        name = f"accuracy_{dataset}_{student}.png".replace(":", "_").replace("/", "_")
        plot_accuracy_vs_ipc(subset, figs / name, f"{dataset}, student {student}")
        body.append(
            _figure(
                f"figures/{name}",
                f"accuracy against IPC, {dataset}, student {student} (mean +- std)",
            )
        )
    if len({r["protocol"] for r in records}) > 1:  # several label regimes: side by side
        body += [
            "<h3>Label regimes</h3>",
            '<p class="note">One column a regime; IOR is the gain over random real images of '
            "the same IPC under the same regime, HLR the full training set's hard-label "
            "accuracy minus the set's (docs/design.md, <i>Scores</i>).</p>",
            _md_table_to_html(regime_markdown(regime_rows(records))),
        ]
    for rec in records:
        if rec.get("curves"):
            run = f"{rec['method']}_{rec['ipc']}_{rec['student']}_{rec['protocol']}"
            name = f"curve_{run}_{rec.get('split', 'test')}.png".replace(":", "_").replace("/", "_")
            plot_results_curves(rec, figs / name)
            body.append(
                _figure(
                    f"figures/{name}",
                    f"training curve: {rec['method']} IPC {rec['ipc']} -> {rec['student']}, "
                    f"{rec['protocol']} labels, {rec.get('split', 'test')} split",
                )
            )
    return body


def _set_section(d: Path, figs: Path) -> tuple[str, list[str]]:
    """(its navigation link, its parts): one distilled set's record, diagnostics and figures."""
    parts: list[str] = []
    ds = load_distilled(d, verify=True) if not _is_full(d) else None
    manifest = json.loads((d / "manifest.json").read_text())
    anchor = f"set-{manifest['method']}-{manifest['ipc']}"
    link = f'<a href="#{anchor}">{html.escape(manifest["method"])} IPC {manifest["ipc"]}</a>'
    parts.append(
        f'<h2 id="{anchor}">Distilled set: {html.escape(manifest["method"])}, '
        f"{html.escape(manifest['dataset']['name'])}, IPC {manifest['ipc']}</h2>"
    )
    stats = (
        json.loads((d / "run_stats.json").read_text()) if (d / "run_stats.json").is_file() else {}
    )
    teacher = manifest["teacher"]
    parts.append(
        _table(
            {
                "directory": str(d),
                "method": manifest["method"],
                "seed": manifest["seed"],
                "images": manifest.get("num_images"),
                "factor": manifest.get("factor"),
                "teacher": f"{teacher['arch']} epoch {teacher['epoch']}, test accuracy "
                f"{teacher.get('test_accuracy')}, sha256 {teacher['weights_sha256'][:16]}",
                "label teacher": f"epoch {manifest['label_teacher']['epoch']} of "
                f"{manifest['label_teacher']['path']}",
                "time per stage (s)": ", ".join(
                    f"{st['stage']} {st['seconds']:.1f}" for st in stats.get("stages", [])
                ),
                "teacher forwards per stage": ", ".join(
                    f"{st['stage']} {st['teacher_forwards']:,}" for st in stats.get("stages", [])
                ),
                "total time (s)": stats.get("total_seconds"),
                "peak memory (MiB RSS)": stats.get("peak_rss_mib"),
            }
        )
    )
    tag = f"{manifest['method']}_ipc{manifest['ipc']}"
    diag = manifest.get("diagnostics")
    if diag:
        diagnostics_figure(diag, figs / f"diagnostics_{tag}.png")
        parts += [
            "<h3>What the teacher thinks of the selected patches</h3>",
            f"<p class='note'>{html.escape(summary_line(diag))}. Measured with the "
            "scoring teacher on each patch exactly as it was scored, beside the whole "
            "candidate pool for contrast.</p>",
            *_warning_note(diag, manifest),
            diagnostics_table(diag),
            _figure(
                f"figures/diagnostics_{tag}.png",
                "teacher top-1 per class (selected against the pool), and the classes it "
                "predicts for the selected patches",
            ),
        ]
    if ds is not None:
        distilled_grid_figure(ds, figs / f"images_{tag}.png")
        parts.append(
            _figure(f"figures/images_{tag}.png", "the distilled images, one row per class")
        )
    scores_file = d / "scores.safetensors"
    if scores_file.is_file():
        scores = load_file(str(scores_file))
        info = ds.info if ds is not None else None
        if "pooled" in scores and "sample" in scores and info is not None:
            candidates_figure(scores, info, figs / f"candidates_{tag}.png")
            parts.append(
                _figure(
                    f"figures/candidates_{tag}.png",
                    "sample candidates: Shapley heatmap over the image (red helps the true "
                    "class, blue hurts), the pooled map (one cell per crop window) with its "
                    "argmax, and the crops (dashed orange: the noisy crops, solid red: the "
                    "noise-free one)",
                )
            )
        elif manifest["method"] == "infoutil":
            parts.append(
                "<p class='note'>No attribution maps: the crop window is the whole image "
                "(the default, factor 1, at every resolution), so the informativeness stage "
                "had no position to choose and computed none; the selection is by the "
                "utility rule alone. At 128 px (ImageWoof) whole images chosen this way "
                "beat quarters placed by the Shapley map by 6 points on validation, and "
                "rded and random real images by 6-7 points on the test set at IPC 10 "
                "(docs/method.md, <i>At high resolution</i>).</p>"
            )
        if "grad_norm" in scores and info is not None:
            grad_norm_figure(scores, info, figs / f"gradnorm_{tag}.png")
            parts.append(
                _figure(
                    f"figures/gradnorm_{tag}.png",
                    "utility: gradient norms of every crop, per class",
                )
            )
    parts.append(
        "<h3>Configuration</h3><pre>"
        + html.escape(json.dumps(manifest["config"], indent=2))
        + "</pre>"
    )
    return link, parts


def _summary(evals: list[Path]) -> str:
    """A few sentences at the top: the headline accuracy of each method and the teacher."""
    if not evals:
        return ""
    records = collect_results(evals)
    items = "".join(
        f"<li><b>{html.escape(r['method'])}</b>, {html.escape(r['dataset'])} IPC {r['ipc']}: "
        f"{format_accuracy(r['mean'], r['std'], len(r['seeds']))}% ({len(r['seeds'])} seed(s), "
        f"{html.escape(r['student'])} student, {r['epochs']} epochs)</li>"
        for r in records
    )
    teacher = records[0].get("teacher_accuracy")
    line = f"Teacher test accuracy: {100 * teacher:.2f}%. " if teacher is not None else ""
    return f"<p>{line}Student top-1 on the real test set (last epoch):</p><ul>{items}</ul>"


def _is_full(d: Path) -> bool:
    return bool(json.loads((d / "manifest.json").read_text()).get("full_training_set"))


def _md_table_to_html(md: str) -> str:
    lines = [ln for ln in md.strip().splitlines() if ln.strip()]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    th = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body
    )
    return f"<table><tr>{th}</tr>{trs}</table>"


def _warning_note(diag: dict, manifest: dict) -> list[str]:
    """The distil's warning, where it gave one, with the same likely cause."""
    rule = (manifest.get("config") or {}).get("utility", {}).get("select")
    rule = rule if manifest.get("method") == "infoutil" else None
    said = diagnostics_warning(diag, manifest["teacher"].get("test_accuracy"), rule)
    return [f"<p class='warn'>warning: {html.escape(said)}</p>"] if said else []
