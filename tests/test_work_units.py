"""The work units of ``make test`` (``tests/conftest.py``): every file they name exists, and
the long units are handed out first, in the order given, whatever xdist's defaults."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _conftest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("suite_conftest", ROOT / "tests/conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_named_unit_is_a_file_or_a_shared_group() -> None:
    conf = _conftest()
    groups = set(conf.SHARED.values())
    for path in conf.SHARED:
        assert (ROOT / path).is_file(), path
    for unit in conf.LONG:
        assert unit in groups or (ROOT / unit).is_file(), unit
    assert list(conf.LONG.values()) == sorted(conf.LONG.values(), reverse=True)


def test_the_scheduler_keeps_the_order_of_the_collection() -> None:
    pytest.importorskip("xdist")
    conf = _conftest()
    option = SimpleNamespace(loadscopereorder=True, dist="loadfile", tx=["2*popen"])
    config = SimpleNamespace(option=option, getvalue=lambda name: getattr(option, name))
    sched = conf.pytest_xdist_make_scheduler(config, log=None)
    assert sched is not None
    assert option.loadscopereorder is False  # xdist would sort units by their test count
    assert sched._split_scope("tests/faults/test_interrupts.py::test_x[SIGINT]") == (
        "faults-reference"
    )
    assert sched._split_scope("tests/ltmodels/test_pack.py::test_y") == (
        "tests/ltmodels/test_pack.py"
    )
