"""docs/architecture.md stays true: imports only go down its list of stages, with its two exceptions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: the deliberate exceptions docs/architecture.md names: (importing stage, imported module prefix)
EXCEPTIONS = {("inference", "wsiheat.postprocess"), ("training", "wsiheat.evaluation.metrics")}


def documented_ranks() -> dict[str, int]:
    """Stage -> rank, from the "Imports only go down this list" sentence of docs/architecture.md."""
    text = (REPO / "docs" / "architecture.md").read_text()
    m = re.search(r"Imports only go down this list[^:]*:(.*?)with two deliberate exceptions", text, re.S)
    assert m, "docs/architecture.md lost its import-order sentence"
    ranks = {}
    for rank, group in enumerate(m.group(1).split("→")):
        for name in re.findall(r"`([a-z_]+)`", group):
            ranks[name] = rank
    return ranks


def stage_imports() -> list[tuple[str, str, str]]:
    """(file, importing stage, imported wsiheat module) for every absolute wsiheat import in the package."""
    out = []
    for path in sorted((REPO / "wsiheat").rglob("*.py")):
        rel = path.relative_to(REPO / "wsiheat").with_suffix("")
        stage = rel.parts[0]
        if stage in ("__init__", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            out += [(str(rel), stage, n) for n in names if n.startswith("wsiheat.")]
    return out


def test_every_stage_is_in_the_documented_order():
    ranks = documented_ranks()
    stages = {p.stem if p.is_file() else p.name for p in (REPO / "wsiheat").iterdir()
              if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and not p.name.startswith("__")}
    assert stages - set(ranks) == set(), "stages missing from docs/architecture.md's import order"
    assert set(ranks) - stages == set(), "docs/architecture.md names stages that do not exist"


def test_imports_only_go_down_the_documented_order():
    ranks = documented_ranks()
    upward = []
    for file, stage, module in stage_imports():
        target = module.split(".")[1]
        if target == stage or ranks[target] <= ranks[stage]:
            continue
        if any(stage == s and module.startswith(prefix) for s, prefix in EXCEPTIONS):
            continue
        upward.append(f"{file} imports {module}")
    assert upward == []
    # "Nothing but cli imports cli or demo"
    assert [f"{f} imports {m}" for f, stage, m in stage_imports()
            if stage not in ("cli", "demo") and m.split(".")[1] in ("cli", "demo")] == []
    # the exceptions are still used (else the doc should drop them)
    used = {(s, p) for s, p in EXCEPTIONS for _, stage, module in stage_imports() if stage == s and module.startswith(p)}
    assert used == EXCEPTIONS
