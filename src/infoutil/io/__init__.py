"""Files on disk: atomic writes, teacher checkpoints, distilled sets."""
