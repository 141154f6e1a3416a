"""Live progress of a running study: what its trials are doing (:mod:`.state`: phase files
written by the trials' workers, read with the journal and parquet rows), how that is shown
(:mod:`.view`: redrawn on the driver's terminal, timestamped lines in logs, ``ltsearch
status --watch``) and the terminal block that keeps other output above it
(:mod:`.terminal`). Imports none of torch, Ray, Optuna or pandas."""
