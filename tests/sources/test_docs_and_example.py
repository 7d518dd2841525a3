"""docs/gradient_sources.md's code blocks run as written; the MNIST-1D example runs (2 steps)."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
BLOCKS = re.findall(
    r"```python\n(.*?)```", (ROOT / "docs" / "gradient_sources.md").read_text(), re.S
)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_code_block_runs(index: int) -> None:
    exec(compile(BLOCKS[index], f"docs/gradient_sources.md block {index}", "exec"), {})


def test_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    script = "examples/gradient_sources_mnist1d.py"
    monkeypatch.setattr(sys, "argv", [script, "--steps", "2", "--batch", "8"])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for name in ("backprop", "dfa", "forward", "forward_local", "zeroth_order"):
        assert name in out
