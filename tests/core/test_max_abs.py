"""gradkit.core.max_abs (aminmax on CPUs) against torch's infinity norm."""

from __future__ import annotations

import torch

from gradkit.core.max_abs import max_abs


def test_equals_the_infinity_norm_nan_and_inf_included() -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(1000, generator=gen),
        -torch.rand(3, 7, generator=gen, dtype=torch.float64) - 5.0,  # all negative
        torch.tensor([1.0, float("nan"), 2.0]),
        torch.tensor([-float("inf"), 1.0]),
        torch.tensor(-3.0),
        torch.randn(5, generator=gen).to(torch.bfloat16),
        torch.randn(4, generator=gen, dtype=torch.complex64),
    ]
    got = max_abs(tensors)
    expected = torch._foreach_norm(tensors, float("inf"))
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == ()
        assert torch.equal(g, e) or (g.isnan() and e.isnan())


def test_an_empty_tensor_has_largest_magnitude_zero() -> None:
    assert max_abs([torch.zeros(0)])[0].item() == 0.0
    assert max_abs([]) == []
