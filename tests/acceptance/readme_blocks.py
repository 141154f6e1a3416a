"""The README's ```sh and ```python blocks, extracted and run in README order.

Every such block runs as written, in the repository root, with this venv's ``bin`` first
on ``PATH`` (``sh``: ``bash -euo pipefail``; ``python``: this interpreter). A block that
cannot run there carries a marker comment on the line just before its fence:

- ``<!-- readme-test: skip: REASON -->``: never run (real LVIS, a Ray cluster, the
  top-level ``make`` commands .ci/run runs itself, a synopsis of placeholders);
- ``<!-- readme-test: after-quickstart -->``: needs ``runs/quickstart``, the results of
  ``make quickstart``; run by ``.ci/run`` after it (and by the acceptance test on a
  stand-in made from the ``--smoke`` study's results).

Any other ``readme-test`` comment, or a marker not followed by a fence, is an error.

Usage (exit 1 when a block fails)::

    python tests/acceptance/readme_blocks.py list [--readme README.md]
    python tests/acceptance/readme_blocks.py run [--after-quickstart] [--root DIR]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from workspace import Ran, run  # noqa: E402

LANGS = {"sh": "sh", "bash": "sh", "python": "python"}
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<what>.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
RUN, SKIP, AFTER = "run", "skip", "after-quickstart"
TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    """One code block: its language (``sh``/``python``), the fence's line number, its
    text, and what to do with it (``run``, ``skip`` with a reason, ``after-quickstart``)."""

    lang: str
    line: int
    code: str
    kind: str = RUN
    reason: str = ""

    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def _marker(line: str, number: int) -> tuple[str, str] | None:
    m = MARKER.match(line.strip())
    if m is None:
        return None
    what = m["what"]
    if what == AFTER:
        return AFTER, ""
    if what.startswith("skip:") and what[5:].strip():
        return SKIP, what[5:].strip()
    raise ValueError(
        f"README.md:{number}: unknown marker {line.strip()!r}; write "
        "'<!-- readme-test: skip: REASON -->' or '<!-- readme-test: after-quickstart -->'"
    )


def parse(text: str) -> list[Block]:
    """The sh/python blocks of a README, in order, with their markers.

    Raises:
        ValueError: a malformed marker, a marker not just before a fence, an unclosed fence.
    """
    lines = text.splitlines()
    blocks, pending, i = [], None, 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            if pending is not None:
                raise ValueError(f"README.md:{i}: a readme-test marker must precede a fence")
            pending = _marker(lines[i], i + 1)
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: unclosed code fence")
        lang = LANGS.get(fence["lang"])
        if lang is not None:
            kind, reason = pending or (RUN, "")
            code = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(lang, i + 1, code, kind, reason))
        elif pending is not None:
            raise ValueError(f"README.md:{i + 1}: marker on a ```{fence['lang']} block")
        pending, i = None, end + 1
    if pending is not None:
        raise ValueError("README.md: a readme-test marker at the end, before no fence")
    return blocks


def run_block(block: Block, root: Path) -> Ran:
    """Run one block in ``root`` (the repository root a user would be in)."""
    if block.lang == "sh":
        return run(["bash", "-euo", "pipefail", "-c", block.code], root, timeout=TIMEOUT)
    return run([sys.executable, "-c", block.code], root, timeout=TIMEOUT)


def run_blocks(blocks: list[Block], root: Path) -> list[tuple[Block, Ran]]:
    """Run ``blocks`` in order, printing one line each; returns the failures."""
    failed = []
    for b in blocks:
        result = run_block(b, root)
        print(f"{b.where()}: {'ok' if result.rc == 0 else 'FAILED'}", flush=True)
        if result.rc != 0:
            failed.append((b, result))
    return failed


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["list", "run"])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--after-quickstart", action="store_true", help="run those blocks")
    args = parser.parse_args(argv)
    blocks = parse((args.root / "README.md").read_text(encoding="utf-8"))
    if args.command == "list":
        for b in blocks:
            print(f"{b.where()}: {b.kind}{': ' + b.reason if b.reason else ''}")
        return 0
    kind = AFTER if args.after_quickstart else RUN
    failed = run_blocks([b for b in blocks if b.kind == kind], args.root.resolve())
    for b, result in failed:
        print(f"\n{b.where()} failed:\n{b.code}{result.describe()}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(_main())
    except (ValueError, subprocess.SubprocessError) as exc:
        print(f"readme_blocks: {exc}", file=sys.stderr)
        sys.exit(2)


__all__ = ["AFTER", "RUN", "SKIP", "Block", "parse", "run_block", "run_blocks"]
