"""Errors a user of ``ltsearch`` can cause, each printed by the CLI as one line.

:class:`SpecError` is the study-spec error: it names the file and the key path inside it,
so ``str(err)`` reads ``<file>: <key.path>: <what is wrong>; <what is allowed / the fix>``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ltmodels.errors import ConfigError, DatasetError, LTUserError


def join_path(path: Sequence[str | int]) -> str:
    """Join a key path as YAML readers see it: ``("loss", "choice", 1)`` -> ``loss.choice.1``."""
    return ".".join(str(p) for p in path)


class SpecError(ConfigError):
    """A study spec is invalid: unreadable file, bad YAML, unknown key, value out of range.

    Args:
        reason: what is wrong and what is allowed (or the fix), without file or key.
        file: the spec file, when the spec came from one.
        path: key path inside the spec (``("search", "objectives", 0)``), empty for the file
            as a whole.
    """

    def __init__(
        self, reason: str, *, file: str | None = None, path: Sequence[str | int] = ()
    ) -> None:
        self.reason = " ".join(str(reason).split())  # always one line
        self.file = None if file is None else str(file)
        self.path: tuple[str | int, ...] = tuple(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.file, join_path(self.path)) if p]
        return ": ".join([*parts, self.reason])

    def located(self, file: str | None = None, prefix: Sequence[str | int] = ()) -> SpecError:
        """A copy with ``file`` set (unless already set) and ``prefix`` put before the path."""
        return SpecError(self.reason, file=self.file or file, path=(*tuple(prefix), *self.path))


class StoreError(LTUserError):
    """A results directory holds a file that cannot be read as a result part."""


__all__ = ["ConfigError", "DatasetError", "LTUserError", "SpecError", "StoreError", "join_path"]
