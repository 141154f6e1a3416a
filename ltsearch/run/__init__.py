"""Running a study on Ray: the only package of ``ltsearch`` that imports Ray.

:mod:`.driver` (a study's Ray Tune run), :mod:`.search` (the Optuna journal, the plan of
a resumed run, the searcher that adopts trials left running), :mod:`.trainable` (one
Tune trial: a seed loop), :mod:`.distributed` (a multi-worker trial as Ray Train DDP),
:mod:`.cluster` (connecting to Ray), :mod:`.progress` (the per-trial lines) and
:mod:`.stopping` (fail-fast and signals)."""
