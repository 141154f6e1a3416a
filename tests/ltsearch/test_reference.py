"""Reference rows with box and mask numbers side by side (``AP`` of ``metric_kind`` plus
``bbox/AP`` or ``segm/AP``): checked when the spec loads, both shown by the report's ablation
table; a reference of one kind keeps today's format."""

from __future__ import annotations

import copy
import re
from typing import Any

import pandas as pd
import pytest

from ltsearch.errors import SpecError
from ltsearch.report.ablation import ablation_md, ablation_section, reference_columns
from ltsearch.report.tables import prepare_runs, summarize
from ltsearch.spec.points import reference_metrics
from ltsearch.spec.sections import Objective
from ltsearch.spec.study import StudySpec, spec_from_dict

SPEC: dict[str, Any] = {
    "name": "rog-t4",
    "dataset": {"kind": "synthetic", "classes": 8},
    "loss": {"name": "gap", "params": {"gamma": {"grid": [0.0, 1.0]}}},
    "search": {"sampler": "grid", "objectives": ["segm/AP:max"]},
    "reference": {
        "source": "ROG Table 4",
        "metric_kind": "segm",
        "rows": [
            {"gamma": 1.0, "online": True, "AP": 23.9, "bbox/AP": 24.7},
            {"gamma": 0.0, "bbox/AP": 19.2},
        ],
    },
}


def with_rows(*rows: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(SPEC)
    data["reference"]["rows"] = list(rows)
    return data


def test_rows_give_numbers_of_either_kind() -> None:
    spec = spec_from_dict(SPEC)
    assert spec.reference is not None
    first, second = spec.reference.rows
    assert reference_metrics(first, "segm") == {"segm/AP": 23.9, "bbox/AP": 24.7}
    assert reference_metrics(second, "segm") == {"bbox/AP": 19.2}
    assert reference_columns(spec) == ["segm/AP", "bbox/AP"]  # metric_kind's first


@pytest.mark.parametrize(
    ("row", "where", "says"),
    [
        ({"gamma": 1.0, "AP": 23.9, "segm/AP": 23.9}, "reference.rows.0.AP", "twice"),
        ({"gamma": 1.0, "bbox/AP": "24.7"}, "reference.rows.0.bbox/AP", "is a number"),
        ({"gamma": 1.0, "AP": 1, "mask/AP": 2}, "reference.rows.0.mask/AP", "unknown parameter"),
        ({"gamma": 1.0}, "reference.rows.0", "or of bbox/AP, segm/AP"),
    ],
)
def test_bad_rows_are_refused(row: dict[str, Any], where: str, says: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict(with_rows(row))
    line = str(info.value)
    assert line.startswith(where + ":") and says in line, line


def summary_of(spec: StudySpec) -> Any:
    """gamma 1 (recorded before ``online`` existed: no column, so it is the default) and
    gamma 0, one seed each, box and mask AP as lvis-api fractions."""
    runs = pd.DataFrame(
        [
            {"config_hash": "a" * 16, "loss": "gap", "seed": 0, "status": "ok",
             "param.gap.gamma": 1.0, "bbox/AP": 0.250, "segm/AP": 0.235},
            {"config_hash": "b" * 16, "loss": "gap", "seed": 0, "status": "ok",
             "param.gap.gamma": 0.0, "bbox/AP": 0.180, "segm/AP": 0.170},
        ]
    )  # fmt: skip
    prepared, _ = prepare_runs(runs)
    return summarize(prepared, [Objective("segm/AP", "max")], ["bbox/AP", "segm/AP"])


def cells(text: str) -> list[list[str]]:
    """The Markdown table's cells, row by row (separator row dropped)."""
    out = []
    for ln in text.splitlines():
        row = [c.replace("\\|", "|").strip() for c in re.split(r"(?<!\\) \| ", ln[2:-2])]
        out.append(row)
    return [out[0], *out[2:]]


def test_report_shows_both_kinds() -> None:
    spec = spec_from_dict(SPEC)
    header, gamma1, gamma0 = cells(ablation_md(spec, summary_of(spec)))
    assert header[3:] == ["segm/AP paper | ours (\u0394)", "bbox/AP paper | ours (\u0394)"]
    assert gamma1[:2] == ["gap(gamma=1, online=True)", "aaaaaaaa gap(gamma=1)"]
    assert gamma1[3:] == ["23.9 | 23.5 (\u22120.4)", "24.7 | 25.0 (+0.3)"]
    assert gamma0[3:] == ["\u2014 | 17.0", "19.2 | 18.0 (\u22121.2)"]
    section = ablation_section(spec, summary_of(spec))
    assert section.startswith("## Ablation: ROG Table 4 (bbox and segm)")


def test_one_kind_keeps_the_plain_columns() -> None:
    spec = spec_from_dict(with_rows({"gamma": 1.0, "AP": 23.9}, {"gamma": 0.0, "AP": 19.6}))
    header, gamma1, _ = cells(ablation_md(spec, summary_of(spec)))
    assert header[3:] == ["AP paper | ours (\u0394)"] and gamma1[3:] == ["23.9 | 23.5 (\u22120.4)"]
    section = ablation_section(spec, summary_of(spec))
    assert section.startswith("## Ablation: ROG Table 4 (segm)")
