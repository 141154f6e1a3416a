"""One trial, independent of Ray: :mod:`.config` (plain-data configuration, at the
bottom), :mod:`.stages` (one training stage), :mod:`.schedules` (end-to-end or decoupled,
stage-1 cache) and :mod:`.run` (:func:`~.run.run_trial`, the one entry point)."""
