"""Files on disk: atomic writes (``io.atomic``), locks (``io.lock``), teacher checkpoints
(``io.checkpoint``) and distilled sets (``io.distilled``).

This file imports nothing: ``io.atomic`` is used by the first stage (data), and the checkpoint
module needs the model registry, which needs data, so re-exporting it here made a cycle.
"""
