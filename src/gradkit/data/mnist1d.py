"""MNIST-1D, generated locally by the ``mnist1d`` package (never downloaded).

MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", arXiv:2011.14439) is a
procedurally generated 1-D analogue of MNIST: 10 classes, 40 features, 4000 train and 1000 test
examples with the package's default arguments. The dataset's authors report test accuracies of
about 32% (logistic regression), 68% (MLP) and 94% (CNN) on it.

The data is generated with ``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())``
(``get_dataset`` is never used since it may download). Generation takes a few seconds, so the
arrays are cached as ``.npz`` under :func:`gradkit.data.cache.cache_dir`.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from gradkit.data.cache import cache_dir

#: Test accuracies published by the dataset's authors (default arguments).
REFERENCE_ACCURACY: dict[str, float] = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94}


def _generate(seed: int | None) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    if seed is not None:
        args.seed = seed
    data = make_dataset(args)
    return {
        "x": np.asarray(data["x"], dtype=np.float32),
        "y": np.asarray(data["y"], dtype=np.int64),
        "x_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
    }


def load_mnist1d(
    seed: int | None = None, *, use_cache: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(x_train, y_train, x_test, y_test)`` of MNIST-1D as torch tensors.

    Args:
        seed: generator seed. ``None`` (default) keeps the package's default arguments
            (seed 42), the dataset on which the published reference accuracies were measured.
            Any other integer generates a different draw of the same distribution.
        use_cache: read/write the generated arrays from/to the gradkit cache directory.

    Returns:
        ``x_train`` float32 ``(4000, 40)``, ``y_train`` int64 ``(4000,)``, ``x_test`` float32
        ``(1000, 40)``, ``y_test`` int64 ``(1000,)``.
    """
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    name = f"mnist1d_default_seed{'default' if seed is None else seed}.npz"
    path = cache_dir() / name if use_cache else None
    arrays: dict[str, np.ndarray] | None = None
    if path is not None and path.exists():
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            arrays = None
    if arrays is None:
        arrays = _generate(seed)
        if path is not None:
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
    return (
        torch.from_numpy(arrays["x"]),
        torch.from_numpy(arrays["y"]),
        torch.from_numpy(arrays["x_test"]),
        torch.from_numpy(arrays["y_test"]),
    )
