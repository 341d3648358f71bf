"""infoutil: dataset distillation by informativeness (Shapley values) and utility (gradient norms).

The pipeline, one stage a module:
dataset (``infoutil.data``) -> candidates -> informativeness (``infoutil.attribution``,
``infoutil.selection.crops``) -> utility (``infoutil.selection.utility``) -> assembly and soft
labels (``infoutil.methods``) -> distilled set on disk (``infoutil.io``) -> evaluation
(``infoutil.evaluation``) -> report (``infoutil.report``).

The public API is the names below (each imported on first use, so ``import infoutil`` stays
light); everything else may change between versions.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "DistillConfig": "infoutil.config",
    "ProtocolConfig": "infoutil.config",
    "TeacherConfig": "infoutil.config",
    "RunContext": "infoutil.runtime",
    "Cell": "infoutil.pipeline",
    "run_cell": "infoutil.pipeline",
    "import_teacher": "infoutil.training.importer",
    "ValidationSplit": "infoutil.data",
    "load_dataset": "infoutil.data",
    "train_teacher": "infoutil.training.teacher",
    "load_teacher": "infoutil.io",
    "distill": "infoutil.methods",
    "load_distilled": "infoutil.io",
    "evaluate": "infoutil.evaluation.run",
    "compare": "infoutil.evaluation.compare",
    "build_report": "infoutil.report.html",
    "patch_shapley": "infoutil.attribution.patch",
    "shapley_values": "infoutil.attribution.shapley",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'infoutil' has no attribute {name!r}")
