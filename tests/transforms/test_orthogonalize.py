"""Newton-Schulz orthogonalization and the steepest-descent directions (LMOs)."""

from __future__ import annotations

import pytest
import torch

from gradkit.transforms.lmo import dual_norm, steepest_direction
from gradkit.transforms.orthogonalize import (
    CUBIC,
    QUINTIC,
    newton_schulz,
    orthogonalize,
    shape_scale,
)
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)


def _with_singular_values(m: int, n: int, svals: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(svals), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(svals), generator=g, dtype=torch.float64))
    return (u * svals) @ v.T


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (48, 48), (8, 300)])
def test_quintic_singular_values_in_band(shape):
    # condition number <= 100: five quintic steps land every singular value in ~[0.68, 1.2]
    k = min(shape)
    svals = torch.logspace(-2, 0, k, dtype=torch.float64)
    g = torch.stack([_with_singular_values(*shape, svals, seed) for seed in range(4)]).float()
    s = torch.linalg.svdvals(newton_schulz(g, 5, QUINTIC))
    assert s.min() > 0.67 and s.max() < 1.21, (s.min().item(), s.max().item())
    # and the quintic does NOT converge to 1 (the band is the promise, not exactness)
    assert (s - 1).abs().max() > 0.05


def test_polar_factor_matches_svd_on_well_conditioned():
    svals = torch.linspace(1.0, 4.0, 40, dtype=torch.float64)
    g = _with_singular_values(40, 60, svals, 3)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = (u @ vh).float()
    x = newton_schulz(g.float(), 30, CUBIC)
    assert torch.allclose(x, polar, atol=2e-6)
    xt = newton_schulz(g.T.float(), 30, CUBIC)  # tall input: transposed inside
    assert torch.allclose(xt, polar.T, atol=2e-6)
    # the fast quintic is close in direction (cosine) though not in singular values
    q = newton_schulz(g.float(), 5, QUINTIC)
    cos = (q * polar).sum() / (q.norm() * polar.norm())
    assert cos > 0.98


def test_batched_equals_one_by_one_and_conv_view():
    torch.manual_seed(0)
    ups = [torch.randn(16, 8), torch.randn(8, 16), torch.randn(16, 8), torch.randn(6, 2, 3, 3)]
    ups.append(torch.randn(5))
    out = orthogonalize(ups, 5)
    for u, o in zip(ups, out):
        assert o.shape == u.shape and o.dtype == u.dtype
        m = u.reshape(u.shape[0], -1) if u.ndim > 1 else u.reshape(1, -1)
        ref = newton_schulz(m, 5).reshape(u.shape)
        assert torch.allclose(o, ref, atol=1e-6)
    # a (1, n) row's polar factor is the unit vector
    assert torch.allclose(
        orthogonalize([ups[-1]], 30, CUBIC)[0], ups[-1] / ups[-1].norm(), atol=1e-6
    )


def test_shape_scale_and_errors():
    assert shape_scale((3072, 768), "spectral") == pytest.approx(2.0)
    assert shape_scale((768, 3072), "spectral") == 1.0
    assert shape_scale((768, 3072), "rms") == pytest.approx(0.2 * 3072**0.5)
    assert shape_scale((64, 3, 3, 3), "spectral") == pytest.approx((64 / 27) ** 0.5)
    with pytest.raises(ValueError, match="scale"):
        shape_scale((2, 2), "bogus")
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(4), 5)


def test_l2_and_linf_directions_closed_forms():
    torch.manual_seed(1)
    ups = [torch.randn(7, 5), torch.randn(11), torch.randn(2, 3, 4)]
    l2 = steepest_direction(ups, "l2")
    linf = steepest_direction(ups, "linf")
    for u, d2, di in zip(ups, l2, linf):
        assert torch.allclose(d2, u / torch.linalg.vector_norm(u), atol=1e-7)
        assert torch.equal(di, torch.sign(u))
        # <g, d> equals the dual norm: l2 -> l2, linf -> l1
        assert torch.allclose((u * d2).sum(), dual_norm(u, "l2"), rtol=1e-6)
        assert torch.allclose((u * di).sum(), dual_norm(u, "linf"), rtol=1e-6)
    # spectral: <g, U V^T> is the nuclear norm
    g = _with_singular_values(12, 20, torch.linspace(1, 3, 12, dtype=torch.float64), 0).float()
    d = newton_schulz(g, 30, CUBIC)
    assert torch.allclose((g * d).sum(), dual_norm(g, "spectral"), rtol=1e-5)
    with pytest.raises(ValueError, match="norm"):
        steepest_direction(ups, "l3")


def test_fused_iteration_uses_the_given_cache_and_compile_loop_is_deprecated():
    from gradkit.transforms.orthogonalize import CompileCache

    g = torch.randn(3, 6, 10)
    cache = CompileCache()
    eager = newton_schulz(g, 5)
    fast = newton_schulz(g, 5, fused=True, cache=cache, backend="eager")
    assert torch.allclose(eager, fast, atol=1e-6)
    newton_schulz(g, 5, fused=True, cache=cache, backend="eager")
    assert len(cache) == 1  # one compiled copy per shape, reused
    with pytest.warns(DeprecationWarning, match="fused"):
        old = orthogonalize(list(g), 5, compile_loop=False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(old, eager))
