"""Datasets generated or read locally (nothing is downloaded)."""

from gradkit.data.mnist1d import load_mnist1d

__all__ = ["load_mnist1d"]
