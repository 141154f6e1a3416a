"""The import layers of ARCHITECTURE.md, checked so that the picture cannot drift.

Every import in ``ltmodels/`` and ``ltsearch/`` (those inside functions too) goes from a
module to one of its own group or to a lower layer; module-level imports form no circle;
Ray is imported only under ``ltsearch/run/``, and everything else imports and answers
``ltsearch validate`` with Ray made unimportable.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first; a module's group is its longest matching entry. A module may import its
# own group and any group of a lower layer, never one beside or above it.
LAYERS: list[tuple[str, ...]] = [
    # foundations: import nothing of ltmodels, usable from every layer
    ("ltmodels.errors", "ltmodels.engine.distributed", "ltmodels.engine.atomic",
     "ltmodels.trial.config"),
    ("ltmodels.data", "ltmodels.losses"),
    ("ltmodels.modeling", "ltmodels.evaluation"),
    ("ltmodels.engine",),
    ("ltmodels.cache",),
    ("ltmodels.trial",),
    ("ltsearch.errors", "ltsearch.rows", "ltsearch.journal", "ltsearch.provenance"),
    ("ltsearch.spec",),
    (
        "ltsearch.store", "ltsearch.space", "ltsearch.study_dir", "ltsearch.control",
        "ltsearch.rung_log",
    ),
    ("ltsearch.tracking",),
    ("ltsearch.report", "ltsearch.status"),
    ("ltsearch.live", "ltsearch.authoring"),
    ("ltsearch.run",),
    ("ltsearch.cli",),
    ("ltsearch.__main__",),
]  # fmt: skip
RAY_PACKAGE = "ltsearch.run"


def module_files() -> dict[str, Path]:
    """``dotted name -> file`` of every module of both packages (the empty roots left out)."""
    out = {}
    for pkg in ("ltmodels", "ltsearch"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if len(parts) > 1:
                out[".".join(parts)] = path
    return out


MODULES = module_files()


def resolve(name: str) -> str | None:
    """The module of ours a dotted import name lands in (``None``: not ours)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, *, top_level: bool) -> list[tuple[str, int]]:
    """``(imported name, line)`` of a file: module-level statements only, or all."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a import b`: module a.b when b is one, else a (resolved below)
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return out


def edges(*, top_level: bool) -> set[tuple[str, str, int]]:
    """``(importer, imported module, line)`` between our modules."""
    out = set()
    for src, path in MODULES.items():
        for name, line in imports(path, top_level=top_level):
            dst = resolve(name)
            if dst and dst != src:
                out.add((src, dst, line))
    return out


def group_of(module: str) -> tuple[int, str]:
    best: tuple[int, str] | None = None
    for layer, groups in enumerate(LAYERS):
        for g in groups:
            if (module == g or module.startswith(g + ".")) and (
                best is None or len(g) > len(best[1])
            ):
                best = (layer, g)
    assert best is not None, f"{module} has no layer: add it to LAYERS and ARCHITECTURE.md"
    return best


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        group_of(module)


def test_imports_go_down_the_layers() -> None:
    wrong = []
    for src, dst, line in sorted(edges(top_level=False)):
        (ls, gs), (ld, gd) = group_of(src), group_of(dst)
        if gs != gd and ld >= ls:
            wrong.append(
                f"{MODULES[src].relative_to(REPO)}:{line}: {src} ({gs}) imports {dst} ({gd})"
            )
    assert not wrong, "imports against the layers of ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_module_level_imports_form_no_circle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, dst, _ in edges(top_level=True):
        graph[src].add(dst)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_ray_is_imported_only_under_ltsearch_run() -> None:
    found = []
    for module, path in MODULES.items():
        if module == RAY_PACKAGE or module.startswith(RAY_PACKAGE + "."):
            continue
        for name, line in imports(path, top_level=False):
            if name == "ray" or name.startswith("ray."):
                found.append(f"{path.relative_to(REPO)}:{line}: imports {name}")
    assert not found, "Ray outside ltsearch/run/:\n" + "\n".join(found)


BLOCK_RAY = """
import importlib, importlib.abc, sys

class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"{name} is unimportable in this test")
        return None

sys.meta_path.insert(0, NoRay())
for name in sys.argv[2:]:
    importlib.import_module(name)
from ltsearch.cli import main
assert main(["validate", sys.argv[1]]) == 0
assert not [m for m in sys.modules if m == "ray" or m.startswith("ray.")]
print("imported", len(sys.argv) - 2, "modules without Ray")
"""


@pytest.mark.slow
def test_everything_outside_run_works_without_ray(tmp_path: Path) -> None:
    names = [  # __main__ would run the CLI on import
        m
        for m in MODULES
        if not (m == RAY_PACKAGE or m.startswith(RAY_PACKAGE + ".")) and m != "ltsearch.__main__"
    ]
    study = REPO / "studies" / "quickstart.yaml"
    p = subprocess.run(
        [sys.executable, "-c", BLOCK_RAY, str(study), *names],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"imported {len(names)} modules without Ray" in p.stdout
