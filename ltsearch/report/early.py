"""The report's early-stopping section: what each rung decided, and two fronts.

A study with ``search.early_stopping`` stops configurations at rung epochs; their rows are
``status: stopped`` with the rung's metrics (:mod:`ltsearch.run.rungs`). The rest of the
report ranks fully trained configurations only; this section shows

- the epochs the study trained against training every configuration to the end;
- per rung, which configurations went on and which stopped (from ``rungs.jsonl``, the
  scheduler's decisions), with the objectives they had there;
- the front of the fully trained configurations, and the front once the stopped ones are
  counted too, at the metrics of the rung where they stopped (fewer epochs: an indication
  of what was cut, never a result).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ltsearch.report.pareto import hypervolume, nondominated_mask
from ltsearch.report.sections import hv_reference
from ltsearch.report.tables import Summary, config_label, config_params, fmt, md_table
from ltsearch.rung_log import CONTINUE, RUNG_KEY, RungRecord, read_log
from ltsearch.spec.early_stopping import EarlyStopping
from ltsearch.spec.study import StudySpec

MAX_RUNG_ROWS = 60  # per rung, in the decision table


def _epochs_line(spec: StudySpec, runs: pd.DataFrame) -> str:
    epochs = spec.training.epochs
    ok = runs[runs["status"] == "ok"]
    stopped = runs[runs["status"] == "stopped"]
    spent = len(ok) * epochs + int(stopped[RUNG_KEY].sum() if RUNG_KEY in stopped else 0)
    full = (len(ok) + len(stopped)) * epochs
    share = f" ({100 * spent / full:.0f}%)" if full else ""
    n_stopped = stopped["config_hash"].nunique()
    return (
        f"Epochs trained (configuration \u00d7 seed): **{spent}** of the {full} that training "
        f"these configurations to the end takes{share}; {n_stopped} of "
        f"{runs['config_hash'].nunique()} configurations stopped early."
    )


def _rung_table(records: Sequence[RungRecord], metrics: Sequence[str], scale: float) -> str:
    """One row per configuration and rung, rung by rung, in the order they were decided."""
    header = ["rung (epoch)", "config", "configuration", *metrics, "decision"]
    rows = []
    for rung in sorted({r.rung for r in records}):
        at = [r for r in records if r.rung == rung]
        went_on = sum(r.decision == CONTINUE for r in at)
        for r in at[:MAX_RUNG_ROWS]:
            values = [fmt(v * scale, 2) for v in r.values]  # early rungs: small values
            verdict = "went on" if r.decision == CONTINUE else "**stopped**"
            rows.append([rung, r.config_hash[:8], r.label, *values, verdict])
        rows.append([rung, "", f"{went_on} of {len(at)} went on", *[""] * len(metrics), ""])
    return md_table(header, rows)


def _stopped_configs(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per stopped configuration: label, rung, mean over seeds of each metric."""
    stopped = runs[runs["status"] == "stopped"]
    rows = []
    for chash, group in stopped.groupby("config_hash", sort=True):
        first = group.iloc[0]
        loss = str(first["loss"])
        row = {"config_hash": chash, "label": config_label(loss, config_params(first, loss))}
        row["rung"] = int(group[RUNG_KEY].max())
        row.update({f"{m}.mean": group[m].mean() if m in group else np.nan for m in metrics})
        rows.append(row)
    return pd.DataFrame(rows)


def _fronts_md(summary: Summary, stopped: pd.DataFrame) -> str:
    objs = summary.objectives
    cols = [f"{o.metric}.mean" for o in objs]
    dirs = [o.direction for o in objs]
    trained = summary.configs.assign(rung=np.nan)[["config_hash", "label", "rung", *cols]]
    both = pd.concat([trained, stopped.reindex(columns=trained.columns)], ignore_index=True)
    ref = hv_reference(dirs)
    lines = []
    for name, frame in (("fully trained only", trained), ("stopped ones counted too", both)):
        values = frame[cols].to_numpy(float)
        front = frame[nondominated_mask(values, dirs)]
        hv = hypervolume(values, dirs, ref)
        members = ", ".join(
            f"{h[:8]} {lab}" + ("" if pd.isna(r) else f" (stopped at epoch {int(r)})")
            for h, lab, r in zip(front["config_hash"], front["label"], front["rung"], strict=True)
        )
        lines.append(f"- {name}: {len(front)} on the front, hypervolume {hv:.2f}: {members}")
    return "\n".join(lines)


def _rung_source(early: EarlyStopping) -> str:
    """What a rung evaluated, when not the weights themselves (ending the sentence)."""
    if early.ema_half_life is not None:
        return (
            f", of an exponential moving average of the weights (half-life "
            f"{early.ema_half_life:g} epochs; the fully trained rows are of the weights)."
        )
    if early.cooldown is not None:
        return (
            f", of a copy trained {early.cooldown:g} epochs further with the learning rate "
            "decaying linearly to 0, then dropped (the trials went on from the rung's own "
            "weights; the fully trained rows are of those)."
        )
    return "."


def early_stopping_md(
    spec: StudySpec, study_dir: Path, runs: pd.DataFrame, summary: Summary, scale: float
) -> str:
    """The section (empty for a study without early stopping)."""
    early = spec.search.early_stopping
    if early is None:
        return ""
    metrics = spec.search.metric_names
    parts = [
        f"## Early stopping (MO-ASHA)\n\nRungs at epochs {early.rungs} of "
        f"{spec.training.epochs}, reduction {early.reduction}: at each rung a configuration "
        f"went on only if it was in the best 1/{early.reduction} of those that had reached "
        f"it, by non-dominated sorting on ({', '.join(metrics)}), ties by crowding distance"
        + (
            ", or if no configuration at the rung beat it in every objective (promotion: front)"
            if early.promotion == "front"
            else ""
        )
        + ". Values are means over seeds at the rung, in %"
        + _rung_source(early)
    ]
    if not runs.empty:
        parts.append(_epochs_line(spec, runs))
    records = read_log(study_dir)
    if not records:
        parts.append("No configuration has reached a rung yet.")
        return "\n\n".join(parts)
    parts.append(_rung_table(records, metrics, scale))
    objs = summary.objectives
    if objs and not summary.configs.empty:
        stopped = _stopped_configs(runs, [o.metric for o in objs])
        ref = ", ".join(fmt(r) for r in hv_reference([o.direction for o in objs]))
        parts.append(
            f"Pareto fronts on the objectives' means (hypervolume with reference point ({ref})). "
            "The Pareto front section above ranks fully trained configurations only; a "
            "stopped one counted here has the metrics of the rung where it stopped (fewer "
            "epochs than the others).\n\n" + _fronts_md(summary, stopped)
        )
    return "\n\n".join(parts)


__all__ = ["early_stopping_md"]
