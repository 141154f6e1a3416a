"""Reports of a study directory: :mod:`.document` (``report.md``), :mod:`.pareto` (fronts,
hypervolume, domination probabilities), :mod:`.tables`, :mod:`.sections` (papers'
reference tables) and :mod:`.plots`. Reads parquet only: no Ray."""
