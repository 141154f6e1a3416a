"""The training engine: the training loop (:mod:`.train`), inference and LVIS scoring
(:mod:`.evaluate`), checkpoints with RNG state (:mod:`.checkpoint`), DDP helpers
(:mod:`.distributed`) and atomic file writes (:mod:`.atomic`). Imports modeling-free
torch only, and :mod:`ltmodels.evaluation` for the metrics."""
