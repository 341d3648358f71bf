"""Files on disk: atomic writes, teacher checkpoints, distilled sets."""

from infoutil.io.checkpoint import Teacher, load_teacher
from infoutil.io.distilled import DistilledSet, load_distilled

__all__ = ["DistilledSet", "Teacher", "load_distilled", "load_teacher"]
