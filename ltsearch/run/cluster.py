"""Connecting to Ray: an existing cluster, the job's cluster, or a local one.

A study launched with ``--address`` (or inside ``ray job submit``, which sets
``RAY_ADDRESS``) joins that cluster; otherwise a local Ray starts with enough logical CPUs
for a trial plus its DDP workers (``ray.init(num_cpus=2)`` on a 2-core machine makes Ray
Train wait forever for a second worker's CPU, so logical CPUs are oversubscribed).

Token authentication (Ray >= 2.60): a cluster started with a token (``~/.ray/auth_token``,
``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``) only accepts clients that send it, but Ray
turns token mode on by itself only for a local cluster or ``address="auto"``. When an
address is given, ``RAY_AUTH_MODE`` is unset and a token is available here, this module
sets ``RAY_AUTH_MODE=token`` (auth is never switched off; an explicit ``RAY_AUTH_MODE``
is respected).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ltmodels.errors import LTUserError

log = logging.getLogger(__name__)

LOCAL_MIN_CPUS = 4
LOCAL_STARTS = 3
"""Tries to start a local Ray: its raylet must register with its GCS within 30 s (fixed in
Ray), which a 2-core machine busy with other work can miss; a later start usually makes it."""
_STARTUP_TIMEOUT = "timed out during startup"


class ClusterError(LTUserError):
    """The Ray cluster given by ``--address`` or ``RAY_ADDRESS`` cannot be joined."""


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def _enable_token_mode() -> None:
    """``RAY_AUTH_MODE=token`` for this process and its children. Ray caches its config
    when first imported, so it is re-read, as Ray itself does for ``address="auto"``."""
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._raylet import Config  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - another Ray layout; the variable still applies
        return
    Config.initialize("")


def connect(address: str | None, *, cpus_needed: float = 1.0) -> str:
    """Initialise Ray once per process; return a short description of where it runs.

    Raises:
        ClusterError: the cluster at ``address`` cannot be reached or refuses the client.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return "ray (already initialised)"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        if "RAY_AUTH_MODE" not in os.environ and _token_available():
            _enable_token_mode()
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError) as exc:
            first = _cause_line(exc)
            raise ClusterError(
                f"cannot join the Ray cluster at {address} ({first[:300]}); check the address "
                "(`ray status --address ...`) and, if the cluster uses token authentication, "
                "that RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN) "
                "are set here"
            ) from None
        return f"ray cluster at {address}"
    cpus = max(LOCAL_MIN_CPUS, int(cpus_needed + 0.999), os.cpu_count() or 1)
    for start in range(1, LOCAL_STARTS + 1):
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
            break
        except Exception as exc:  # Ray raises a bare Exception for it
            if _STARTUP_TIMEOUT not in str(exc) or start == LOCAL_STARTS:
                raise
            log.warning(
                "the local Ray node did not register within Ray's 30 s (a loaded machine?); "
                "starting it again (%d of %d)", start + 1, LOCAL_STARTS,
            )  # fmt: skip
            ray.shutdown()
    return f"local ray ({cpus} logical CPUs)"


_AUTH = re.compile(r"(?:Unauthenticated|InvalidAuthToken)[^\n.;]*")


def _cause_line(exc: BaseException) -> str:
    """The line that says why joining failed: Ray buries an authentication refusal ("...
    InvalidAuthToken: Authentication token is missing or incorrect") inside a long
    ConnectionError or RuntimeError, or raises it as their cause."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        found = _AUTH.search(str(seen))
        if found:
            return f"authentication refused: {found.group(0).strip()}"
        if "auth" in type(seen).__name__.lower():
            return f"{type(seen).__name__}: {(str(seen).strip().splitlines() or [''])[0]}"
        seen = seen.__cause__ or seen.__context__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
