"""The harness is organised by stage and a comparison's data flows one way: tasks -> protocol
-> execution -> report -> the compare command. Old module paths still import (deprecated)."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import gradkit.bench

BENCH = Path(gradkit.bench.__file__).parent
#: Each stage may import only from itself and the stages before it.
STAGES = ("tasks", "protocol", "execution", "report", "")


def _stage(module: str) -> int:
    """The stage index of a ``gradkit.bench`` module ("" for the top-level modules)."""
    parts = module.split(".")[2:]
    first = parts[0] if parts else ""
    return STAGES.index(first) if first in STAGES else STAGES.index("")


def _bench_imports(path: Path) -> list[str]:
    """Every ``gradkit.bench.*`` module imported by the file, at any depth (lazy ones too)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("gradkit.bench."):
                out.append(node.module)
            elif node.module == "gradkit.bench":
                out += [f"gradkit.bench.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("gradkit.bench.")]
    return out


def _modules() -> list[tuple[str, Path]]:
    mods = []
    for path in sorted(BENCH.rglob("*.py")):
        rel = path.relative_to(BENCH.parent.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name not in ("gradkit.bench", "gradkit.bench._moved"):
            mods.append((name, path))
    return mods


def test_stages_import_only_backwards():
    wrong = []
    for name, path in _modules():
        for imported in _bench_imports(path):
            if _stage(imported) > _stage(name):
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(wrong)
    assert len(_modules()) > 20  # the walk found the modules


def test_task_interface_imports_no_task_module():
    interface = BENCH / "tasks" / "interface.py"
    assert _bench_imports(interface) == []
    for path in (BENCH / "tasks" / "builtin").glob("*.py"):
        assert "gradkit.bench.tasks.registry" not in _bench_imports(path), path


def test_flat_module_count_is_small():
    flat = [p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")]
    assert sorted(flat) == ["compare.py", "progress.py"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("gradkit.bench.task", "gradkit.bench.tasks.interface"),
        ("gradkit.bench.tasks_mnist1d", "gradkit.bench.tasks.builtin.mnist1d"),
        ("gradkit.bench.train", "gradkit.bench.execution.train"),
    ],
)
def test_old_module_paths_import_with_a_deprecation_warning(old, new):
    import sys

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
