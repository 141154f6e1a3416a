"""Errors a user can cause (bad config, bad dataset, bad parameter).

Everything raised as :class:`LTUserError` is printed by the ``ltsearch`` CLI as one line
(cause and fix) with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LTUserError(Exception):
    """Base class of every error a user can cause and fix."""


class ConfigError(LTUserError, ValueError):
    """A configuration value (loss name, parameter, model spec, study key) is invalid."""


class DatasetError(LTUserError, ValueError):
    """A dataset is missing, malformed or inconsistent; the message names the record."""


__all__ = ["ConfigError", "DatasetError", "LTUserError"]
