"""What each fault case observed, for RELIABILITY.md (``bench/reliability.py``).

A case calls :func:`record` once it has checked its promise; the record is appended, as
one JSON line, to the file named by ``LTSEARCH_FAULT_RECORDS`` (nothing is written when it
is unset, as in ``make test``). ``bench/reliability.py`` runs the suite with that variable
set and joins the records with pytest's own outcome of each test, so a case whose test
failed shows as not survived even if it recorded something before failing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

RECORDS_ENV = "LTSEARCH_FAULT_RECORDS"


def record(
    case: str,
    *,
    group: str,
    injected: str,
    promised: str,
    observed: str,
    **figures: Any,
) -> None:
    """Append one case's record.

    Args:
        case: short name of the fault (one table row).
        group: the issue's section: "driver kill", "corruption", "bad input", ...
        injected: how the fault was made (signal, bytes flipped, mount, ...).
        promised: what the system promises under it.
        observed: what the test saw (one sentence).
        figures: numbers: rows_compared, rows_lost, rows_duplicated, epochs_redone,
            recover_s, ... (plain JSON values).
    """
    path = os.environ.get(RECORDS_ENV)
    if not path:
        return
    entry = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0],
        "case": case,
        "group": group,
        "injected": injected,
        "promised": promised,
        "observed": observed,
        "figures": figures,
        "at": time.time(),
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=str) + "\n")


__all__ = ["RECORDS_ENV", "record"]
