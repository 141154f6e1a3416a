"""The commands that help write a study: ``ltsearch new`` and ``ltsearch schema``.

``new`` writes a commented study file for one loss (:mod:`ltsearch.spec.scaffold`);
``schema`` prints or writes the JSON Schema of a study file (:mod:`ltsearch.spec.schema`),
which editors with yaml-language-server read from a study's first line. Both start no Ray
and no training; their modules are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ltsearch.errors import SpecError

DATA = {"synthetic": "the synthetic data", "lvis": "LVIS (edit its paths)"}


def _cmd_new(args: argparse.Namespace) -> int:
    from ltsearch.spec.scaffold import SCHEMA_FILE, SHIPPED_SCHEMA, check_loss, write_new

    check_loss(args.loss)  # before the default file name uses it
    out = args.out or f"{args.loss}_study.yaml"
    path = write_new(args.loss, args.dataset, out)
    print(
        f"wrote {path}: a study of {args.loss} on {DATA[args.dataset]}; check it with "
        f"`ltsearch validate {path}`, try it with `ltsearch run {path} --smoke`"
    )
    if not SHIPPED_SCHEMA.is_file():
        schema = path.parent / SCHEMA_FILE
        print(f"for editor support: ltsearch schema --out {schema}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from ltsearch.spec.schema import schema_text

    text = schema_text()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if not out.parent.is_dir():
        raise SpecError(
            f"folder {str(out.parent)!r} does not exist; create it or choose another --out",
            file=str(out),
        )
    tmp = out.with_name(f".{out.name}.tmp")  # an editor never reads half a schema
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    print(out)
    return 0


def add_authoring_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``new`` and ``schema`` to the ``ltsearch`` sub-command parsers."""
    p = sub.add_parser("new", help="write a commented study file for one loss")
    p.add_argument("--loss", required=True, help="a registered loss (e.g. acsl, c2am, ebl)")
    p.add_argument(
        "--dataset",
        default="synthetic",
        help="synthetic (the embedded data, default) or lvis (placeholder paths to edit)",
    )
    p.add_argument(
        "--out", help="the file to write (default <loss>_study.yaml); never overwritten"
    )
    p.set_defaults(func=_cmd_new)

    p = sub.add_parser("schema", help="the JSON Schema of a study file, for editors")
    p.add_argument("--out", help="write it to this file (default: print it)")
    p.set_defaults(func=_cmd_schema)


__all__ = ["add_authoring_commands"]
