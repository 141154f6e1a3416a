"""Fault injection for the fault suite, from outside the product's code.

The suite puts this folder on ``PYTHONPATH`` and sets ``LTSEARCH_INJECT`` to a JSON object;
Python imports ``sitecustomize`` at the start of every process, the driver and the Ray
workers it starts included (they inherit the environment). Nothing happens without the
variable. Faults (each key optional):

- ``"loss": [{"match": {"xi": 0.3}, "fault": F}, ...]``: a loss built with parameters
  that include ``match`` misbehaves in its forward pass: F = ``raise`` (RuntimeError),
  ``nan`` (a NaN loss), ``memory`` (a real allocation that fails: MemoryError), ``hang``
  (never returns), ``slow`` (sleeps ``"seconds"``, default 0.2, then returns the right
  value: a study slow enough for a signal to land among its trials). ``match: {}`` hits
  every loss.
- ``"slow_write": {"match": "trials/", "seconds": S}``: an atomic write whose path holds
  ``match`` stays S seconds between writing its temporary file and renaming it, so a kill
  can land while a parquet part is half-way.
- ``"enospc": {"match": "results/", "after": N}``: after N atomic writes to paths holding
  ``match``, every such write fails with ENOSPC (where the machine cannot mount a small
  filesystem).
- ``"pack_lead": {"marker": PATH}``: a process that starts training a pack of two or more
  (configuration, seed) runs (``ltmodels.trial.pack.run_pack``) first appends a JSON line
  to PATH: its pid and the members' ``[loss parameters, seed]``, the leader's first. It
  changes nothing else: the test that kills a pack's leader learns from it whom to kill.
"""

from __future__ import annotations

import errno
import importlib.abc
import importlib.util
import json
import os
import sys
import time
from typing import Any

_SPEC = json.loads(os.environ.get("LTSEARCH_INJECT") or "null")


def _loss_fault(fault: str, seconds: float = 0.2) -> Any:
    def wrap(forward: Any) -> Any:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            if fault == "raise":
                raise RuntimeError("injected fault: the loss raised")
            if fault == "nan":
                if isinstance(out, dict):
                    return {k: v * float("nan") for k, v in out.items()}
                return out * float("nan")
            if fault == "memory":
                bytearray(1 << 50)  # a real allocation of 1 PiB: MemoryError
            if fault == "slow":
                time.sleep(seconds)
            if fault == "hang":
                while True:
                    time.sleep(1)
            return out

        return faulty

    return wrap


def _patch_losses(module: Any) -> None:
    build = module.build_loss

    def build_loss(name: str, **params: Any) -> Any:
        loss = build(name, **params)
        for conf in _SPEC["loss"]:
            if all(params.get(k) == v for k, v in conf.get("match", {}).items()):
                fault = _loss_fault(conf["fault"], conf.get("seconds", 0.2))
                loss.forward = fault(loss.forward)
                break
        return loss

    module.build_loss = build_loss


def _patch_atomic(module: Any) -> None:
    write_atomic = module.write_atomic
    slow = _SPEC.get("slow_write")
    full = _SPEC.get("enospc")
    count = {"n": 0}

    def patched(path: Any, write: Any) -> Any:
        target = str(path)
        if full and full["match"] in target:
            count["n"] += 1
            if count["n"] > full.get("after", 0):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
        if slow and slow["match"] in target:

            def slowly(fh: Any) -> Any:
                out = write(fh)
                fh.flush()
                time.sleep(float(slow["seconds"]))
                return out

            return write_atomic(path, slowly)
        return write_atomic(path, write)

    module.write_atomic = patched


def _patch_pack(module: Any) -> None:
    run_pack = module.run_pack
    marker = _SPEC["pack_lead"]["marker"]

    def marked(cfgs: Any, *args: Any, **kwargs: Any) -> Any:
        if len(cfgs) > 1:
            members = [[dict(c.train.loss_params), c.seed] for c in cfgs]
            line = json.dumps({"pid": os.getpid(), "members": members}) + "\n"
            with open(marker, "a") as fh:  # one short line: appended whole
                fh.write(line)
        return run_pack(cfgs, *args, **kwargs)

    module.run_pack = marked


_PATCHES = {"ltmodels.losses.base": ("loss", _patch_losses)}
_PATCHES["ltmodels.engine.atomic"] = ("slow_write|enospc", _patch_atomic)
_PATCHES["ltmodels.trial.pack"] = ("pack_lead", _patch_pack)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches a module right after it executes, before anything imports names from it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _PATCHES:
            return None
        keys, patch = _PATCHES[name]
        if not any(k in _SPEC for k in keys.split("|")):
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if _SPEC:
    sys.meta_path.insert(0, _Finder())
