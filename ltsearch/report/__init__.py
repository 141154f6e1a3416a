"""Reports of a study directory: :mod:`.document` (``report.md``), :mod:`.pareto` (fronts,
hypervolume, domination probabilities), :mod:`.tables`, :mod:`.sections`, :mod:`.ablation`
(papers' reference tables), :mod:`.plots` (PNGs) and :mod:`.html` with :mod:`.figures`
(``report.html``, interactive). Reads parquet only: no Ray."""
