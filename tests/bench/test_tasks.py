"""Tasks: registry, plug-in tasks, the built-in data sets (shapes, determinism, no download)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradkit.bench import Task, classification_task, get_task, list_tasks, register_task
from gradkit.bench.tasks.builtin.charlm import CharLMData, encode, is_validation_file, load_corpus
from gradkit.errors import UnknownNameError


def test_builtin_tasks_registered():
    names = {t.name for t in list_tasks()}
    assert {"mnist1d-mlp", "mnist1d-cnn", "digits-cnn", "stdlib-charlm"} <= names
    cnn = get_task("mnist1d-cnn")
    assert cnn.higher_is_better and cnn.target == pytest.approx(0.94)
    assert cnn.references["MLP (paper)"] == pytest.approx(0.68)
    assert not get_task("stdlib-charlm").higher_is_better


def test_unknown_task_lists_known_names():
    with pytest.raises(UnknownNameError, match="mnist1d-cnn") as err:
        get_task("nope")
    assert isinstance(err.value, ValueError) and "'nope'" in str(err.value)


def test_task_names_are_canonical():
    assert get_task("MNIST1D_CNN") is get_task("mnist1d-cnn") is get_task("mnist1d cnn")


def test_register_plugin_task_in_a_few_lines():
    x = torch.randn(40, 3)
    y = (x[:, 0] > 0).long()
    task = classification_task(
        "test-plugin", lambda: torch.nn.Linear(3, 2), lambda: (x, y, x, y), target=0.9, steps=5
    )
    register_task(task, replace=True)
    assert get_task("test-plugin") is task
    with pytest.raises(ValueError, match="already registered"):
        register_task(task)
    data = task.load_data(torch.device("cpu"))
    model = task.build_model()
    batch = data.sample_batch(torch.Generator().manual_seed(0), 8)
    assert data.loss(model, batch).ndim == 0
    assert 0.0 <= data.evaluate(model) <= 1.0


def test_task_validates_lr_factors():
    with pytest.raises(ValueError, match="lr_factors"):
        Task("bad", "", "acc", True, 0.5, lambda: None, lambda d: None, lr_factors=(2.0, 1.0))


def test_mnist1d_shapes_and_cache():
    from gradkit.data.mnist1d import load_mnist1d

    xtr, ytr, xte, yte = load_mnist1d()
    assert xtr.shape == (4000, 40) and xte.shape == (1000, 40)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert set(ytr.unique().tolist()) == set(range(10))
    again = load_mnist1d()
    assert torch.equal(again[0], xtr) and torch.equal(again[3], yte)


def test_digits_split_is_fixed():
    from gradkit.bench.tasks.builtin.digits import load_digits_split

    a, b = load_digits_split(), load_digits_split()
    assert a[0].shape[1:] == (1, 8, 8) and len(a[0]) + len(a[2]) == 1797
    assert torch.equal(a[2], b[2])


def test_charlm_encoding_and_split(tmp_path):
    ids = encode("a\tb\n~é")
    assert ids.tolist() == [ord("a") - 30, 0, ord("b") - 30, 1, ord("~") - 30, 97]
    # split by file, deterministic, independent of content
    for i in range(30):
        (tmp_path / f"m{i}.py").write_text(f"x = {i}\n" * 50)
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "skip.py").write_text("SKIPPED\n")
    train, val = load_corpus(root=tmp_path)
    sizes = {i: len(f"x = {i}\n") * 50 + 1 for i in range(30)}
    in_val = [i for i in range(30) if is_validation_file(f"m{i}.py")]
    assert 0 < len(in_val) < 30
    assert len(val) == sum(sizes[i] for i in in_val)
    assert len(train) == sum(sizes.values()) - len(val)
    assert "SKIPPED" not in "".join(chr(c + 30) for c in train.tolist() if c > 1)
    data = CharLMData(train, val, context=16, device="cpu", val_windows=4)
    batch = data.sample_batch(torch.Generator().manual_seed(0), 3)
    assert batch.shape == (3, 17)


def test_charlm_untrained_model_bits_per_char_near_uniform():
    from gradkit.bench.tasks.builtin.charlm import VOCAB, CharTransformer

    train, val = np.arange(2000) % 90, np.arange(2000) % 90
    data = CharLMData(train.astype(np.uint8), val.astype(np.uint8), 16, "cpu", val_windows=8)
    torch.manual_seed(0)
    bpc = data.evaluate(CharTransformer(context=16))
    assert abs(bpc - math.log2(VOCAB)) < 1.0
