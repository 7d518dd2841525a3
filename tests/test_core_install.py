"""What works with the core install (torch and numpy only): every module outside the comparison
harness imports, and the features that need an extra say which."""

from __future__ import annotations

import subprocess
import sys

EXTRA_ONLY = ["matplotlib", "scipy", "sklearn", "optuna", "sqlalchemy", "rich", "mnist1d"]

_BLOCK = (
    "import sys\n"
    f"for name in {EXTRA_ONLY!r}:\n"
    "    sys.modules[name] = None  # as if not installed\n"
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + code], capture_output=True, text=True, timeout=300
    )


def test_every_module_outside_the_harness_imports_without_the_extra() -> None:
    code = (
        "import importlib, pkgutil, gradkit\n"
        "skip = ('gradkit.bench', 'gradkit.cli')\n"
        "names = [m.name for m in pkgutil.walk_packages(gradkit.__path__, 'gradkit.')\n"
        "         if not m.name.startswith(skip)]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) > 60  # the walk really visited the package


def test_a_plot_without_matplotlib_names_the_extra() -> None:
    code = (
        "import torch\n"
        "from gradkit.diagnostics.effective_lr import EffectiveLRTracker\n"
        "m = torch.nn.Linear(2, 2)\n"
        "t = EffectiveLRTracker(m, torch.optim.SGD(m.parameters(), lr=0.1), ['weight'])\n"
        "try:\n"
        "    t.plot()\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert 'needs matplotlib: pip install "gradkit[compare]"' in proc.stdout
