"""The RoI-feature cache of a decoupled schedule: a stage-2 trial that fine-tunes only the
box predictor trains and evaluates on box-head features computed once.

:mod:`.manifest` (the checksummed manifest of the array files), :mod:`.store` (fp16 memory
maps, locking), :mod:`.extract` (features of a detector's RoIs), :mod:`.build` (building a
cache for a stage-1 model), :mod:`.train` (training a predictor on the cache),
:mod:`.evaluate` (detections and LVIS metrics from the cache)."""
