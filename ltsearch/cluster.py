"""Connecting to Ray: an existing cluster, the job's cluster, or a local one.

A study launched with ``--address`` (or inside ``ray job submit``, which sets
``RAY_ADDRESS``) joins that cluster; otherwise a local Ray starts with enough logical CPUs
for a trial plus its DDP workers (``ray.init(num_cpus=2)`` on a 2-core machine makes Ray
Train wait forever for a second worker's CPU, so logical CPUs are oversubscribed).
"""

from __future__ import annotations

import os

LOCAL_MIN_CPUS = 4


def connect(address: str | None, *, cpus_needed: float = 1.0) -> str:
    """Initialise Ray once per process; return a short description of where it runs."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return "ray (already initialised)"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"ray cluster at {address}"
    cpus = max(LOCAL_MIN_CPUS, int(cpus_needed + 0.999), os.cpu_count() or 1)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    return f"local ray ({cpus} logical CPUs)"


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
