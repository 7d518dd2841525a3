"""docs/gradients.md's code blocks run as written; the example and benchmark run (tiny sizes)."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "gradients.md").read_text(), re.S)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_code_block_runs(index: int) -> None:
    exec(compile(BLOCKS[index], f"docs/gradients.md block {index}", "exec"), {})


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("examples/multitask_digits.py", ["--epochs", "1", "--seeds", "1"]),
        ("benchmarks/multigrad_overhead.py", ["--steps", "1", "--tasks", "2", "--width", "16"]),
    ],
)
def test_script_runs(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    if "digits" in script:
        pytest.importorskip("sklearn")
    monkeypatch.setattr(sys, "argv", [script, *args])
    threads = torch.get_num_threads()
    try:  # the scripts pin one thread; give the rest of the session its threads back
        runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.count("\n| ") >= 3
