"""gradkit.core.elementwise_math: the compiled forms against the eager (reference) forms, and the
compiled steps of diffGrad and MADGRAD free of the slow vectorized ``pow``."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.core.elementwise_math import cube_root, sigmoid_
from gradkit.optim.diffgrad import DiffGrad
from gradkit.optim.madgrad import MADGRAD


def _wide_range(dtype: torch.dtype) -> torch.Tensor:
    """Non-negative values from the smallest normal float to near the largest, 0 and inf."""
    gen = torch.Generator().manual_seed(0)
    tiny, big = math.log10(torch.finfo(dtype).tiny), math.log10(torch.finfo(dtype).max) - 1
    exps = torch.rand(4000, generator=gen, dtype=torch.float64) * (big - tiny) + tiny
    x = (10.0**exps).to(dtype)
    return torch.cat([x, torch.tensor([0.0, 1.0, 8.0, math.inf], dtype=dtype)])


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 4e-6), (torch.float64, 2e-13)])
def test_compiled_cube_root_matches_the_exact_root(dtype, rtol) -> None:
    """Compiled on a CPU (exp(log(x)/3)) and eager (pow): both within ``rtol`` of the root
    computed in float64 from the same input, over the whole range of the dtype; 0 -> 0,
    inf -> inf, negative -> NaN. The bound: both forms carry the rounding of ``ln x`` (or of
    the exponent 1/3 times ``ln x``), which grows with ``|ln x|`` (up to 89 in float32, 710 in
    float64): about ``|ln x| * eps / 3`` relative."""
    torch._dynamo.reset()
    x = _wide_range(dtype)
    exact = x.double().pow(1.0 / 3.0)
    compiled = torch.compile(lambda xs: cube_root(xs), backend="inductor")
    for got in (cube_root([x])[0], compiled([x])[0]):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), exact, rtol=rtol, atol=0)
        assert got[-4] == 0 and got[-1] == math.inf
    neg = torch.tensor([-8.0], dtype=dtype)
    assert compiled([neg])[0].isnan().all() and cube_root([neg])[0].isnan().all()


def test_compiled_cube_root_uses_exp_and_log_not_pow() -> None:
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    x = torch.rand(100)
    fn = torch.compile(lambda xs: cube_root(xs), backend="inductor")
    _, codes = run_and_get_code(fn, [x])
    kernels = "".join(_per_element_kernels("\n".join(codes)))
    assert kernels, "no per-element kernel found"
    assert "pow" not in kernels
    assert ".exp()" in kernels and ".log()" in kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_sigmoid_matches_the_eager_sigmoid(dtype) -> None:
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, generator=gen, dtype=dtype) * 30 for n in (1, 17, 300)]
    ref = [x.clone() for x in xs]
    got = [x.clone() for x in xs]
    sigmoid_(ref)
    torch.compile(sigmoid_, backend="inductor")(got)
    eps = torch.finfo(dtype).eps
    for r, g, x in zip(ref, got, xs):
        torch.testing.assert_close(g, r, rtol=4 * eps, atol=0)
        torch.testing.assert_close(r, torch.sigmoid(x), rtol=0, atol=0)


def _per_element_kernels(code: str) -> list[str]:
    return [k for k in code.split('extern "C"')[1:] if "for(int64_t x0" in k]


@pytest.mark.parametrize("cls", [DiffGrad, MADGRAD])
def test_compiled_steps_have_no_vectorized_pow(cls) -> None:
    """diffGrad's friction sigmoid and MADGRAD's cube root compile to exp/log, one kernel over
    the elements, and the compiled trajectory follows the eager one."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (40, 7, 130)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = cls(params, lr=1e-2, fused=True)
    ref_opt = cls(ref, lr=1e-2, fused=False)
    codes: list[str] = []
    for step in range(12):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, q, g in zip(params, ref, grads):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            q.grad = g.clone()
        if step == 1:  # the first compiled step
            codes += run_and_get_code(opt.step)[1]
        else:
            opt.step()
        ref_opt.step()
    loops = [k for c in codes for k in _per_element_kernels(c)]
    assert len(loops) == 1, f"{len(loops)} per-element kernels"
    assert ".pow(" not in loops[0]
    assert ".exp()" in loops[0]
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
