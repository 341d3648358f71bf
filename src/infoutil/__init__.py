"""infoutil: dataset distillation by informativeness (Shapley values) and utility (gradient norms).

The pipeline, one stage a module:
dataset (``infoutil.data``) -> candidates -> informativeness (``infoutil.attribution``,
``infoutil.selection.crops``) -> utility (``infoutil.selection.utility``) -> assembly and soft
labels (``infoutil.methods``) -> distilled set on disk (``infoutil.io``) -> evaluation
(``infoutil.evaluation``) -> report (``infoutil.report``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
