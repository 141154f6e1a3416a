"""The torch-free parameter domains (``ltmodels.losses.domains``) and the loss registry agree.

Study specs validate against ``DOMAINS`` without importing torch, training builds from
``LOSSES``: the two must name the same losses with the very same ``Param`` objects, and
``register_loss`` refuses a loss that would make them differ.
"""

from __future__ import annotations

import pytest

from ltmodels.losses import DOMAINS, LOSSES, LongTailLoss, Param, register_loss
from ltmodels.losses.base import Param as BaseParam


def test_registry_and_domains_agree_exactly() -> None:
    assert sorted(LOSSES) == sorted(DOMAINS)
    for name, cls in LOSSES.items():
        assert cls.params is DOMAINS[name], name
        assert dict(cls.params) == dict(DOMAINS[name]), name
    assert all(isinstance(p, Param) for d in DOMAINS.values() for p in d.values())
    assert BaseParam is Param  # the old import path still works


def test_register_loss_refuses_a_loss_without_domains() -> None:
    with pytest.raises(RuntimeError, match="add its parameter domains to .*domains.py"):

        @register_loss("no-domains")
        class NoDomains(LongTailLoss):
            pass

    assert "no-domains" not in LOSSES


def test_register_loss_refuses_a_params_table_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(DOMAINS, "scratch", {"p": Param(0.8, doc="a domain")})
    with pytest.raises(RuntimeError, match=r"declare params = DOMAINS\['scratch'\]"):

        @register_loss("scratch")
        class OwnTable(LongTailLoss):
            params = {"p": Param(0.8, doc="a domain")}

    assert "scratch" not in LOSSES


def test_register_loss_refuses_a_name_twice() -> None:
    with pytest.raises(RuntimeError, match="registered twice"):

        @register_loss("seesaw")
        class Twice(LongTailLoss):
            params = DOMAINS["seesaw"]

    assert LOSSES["seesaw"].__name__ == "SeesawLoss"
