"""A local Ray whose node misses Ray's 30 s registration limit (a loaded machine) is started
again, at most ``LOCAL_STARTS`` times; any other failure is raised at once."""

from __future__ import annotations

from typing import Any

import pytest

from ltsearch.run import cluster

TIMED_OUT = (
    "The current node timed out during startup. This could happen because some of the "
    "raylet failed to startup or the GCS has become overloaded."
)


class FakeRay:
    """``ray.init`` that fails with the given exceptions first, then starts."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures, self.inits, self.shutdowns = list(failures), 0, 0

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.inits += 1
        if self.failures:
            raise self.failures.pop(0)

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch):
    import ray

    def install(failures: list[Exception]) -> FakeRay:
        fake = FakeRay(failures)
        for name in ("is_initialized", "init", "shutdown"):
            monkeypatch.setattr(ray, name, getattr(fake, name))
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        return fake

    return install


def test_a_node_that_timed_out_is_started_again(fake_ray, caplog) -> None:
    fake = fake_ray([Exception(TIMED_OUT)])
    assert cluster.connect(None).startswith("local ray (")
    assert (fake.inits, fake.shutdowns) == (2, 1)
    assert "starting it again (2 of 3)" in caplog.text


def test_the_last_start_raises(fake_ray) -> None:
    fake = fake_ray([Exception(TIMED_OUT)] * cluster.LOCAL_STARTS)
    with pytest.raises(Exception, match="timed out during startup"):
        cluster.connect(None)
    assert fake.inits == cluster.LOCAL_STARTS


def test_other_failures_are_not_retried(fake_ray) -> None:
    fake = fake_ray([RuntimeError("no space left on device")])
    with pytest.raises(RuntimeError, match="no space"):
        cluster.connect(None)
    assert fake.inits == 1
