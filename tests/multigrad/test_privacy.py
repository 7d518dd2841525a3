"""DP-SGD's gradient (gradkit.multigrad.privacy) against Opacus 1.6: the clipped, averaged gradient
(noise 0) on the same model and batch; the noise draw for draw with the same generator; the
noise's standard deviation by a chi-square test; epsilon against Opacus's PrivacyEngine."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from gradkit import multigrad
from gradkit.multigrad.privacy import (
    DPGradient,
    noise_multiplier_for,
    poisson_batch_indices,
)

opacus = pytest.importorskip("opacus")
scipy_stats = pytest.importorskip("scipy.stats")

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)).double()


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.head = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x.unsqueeze(1))).flatten(1))


def test_clipped_gradient_equals_opacus_conv():
    x, y = _batch(16, 9)
    torch.manual_seed(0)
    ref_model = _ConvNet().double()
    model = _ConvNet().double()
    model.load_state_dict(ref_model.state_dict())
    ref = _opacus_grads(
        ref_model, x, y, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=16
    )
    dp = DPGradient(1.0, 0.0, expected_batch_size=16, accountant=None)
    got = _gradkit_grads(model, x, y, dp)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    jac, _ = multigrad.per_example_jacobian(model, nn.functional.cross_entropy, x, y)
    factors = dp.clip_factors(jac)[1]
    assert (factors < 1).any()


def _batch(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 5, generator=g, dtype=torch.float64) * 3, torch.randint(
        0, 3, (b,), generator=g
    )


def _opacus_grads(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: int,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model, loss_reduction="mean")
    opt = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=generator,
    )
    opt.zero_grad()
    nn.functional.cross_entropy(gsm(x), y).backward()
    assert opt.pre_step()
    grads = [p.grad.detach().clone() for p in gsm.parameters()]
    opt.zero_grad()
    gsm._close()
    return grads


def _gradkit_grads(model, x, y, dp: DPGradient) -> list[torch.Tensor]:
    for p in model.parameters():
        p.grad = None
    dp.backward(model, nn.functional.cross_entropy, x, y)
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("seed", range(6))
def test_clipped_gradient_equals_opacus_without_noise(seed):
    # norms of the per-example gradients here are ~1-5, so C = 3 clips some, not all
    x, y = _batch(24, seed)
    model = _model(seed)
    ref = _opacus_grads(
        _model(seed), x, y, max_grad_norm=3.0, noise_multiplier=0.0, expected_batch_size=20
    )
    dp = DPGradient(3.0, 0.0, expected_batch_size=20, accountant=None)
    got = _gradkit_grads(model, x, y, dp)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    # the test can fail: some examples are clipped and some are not
    jac, _ = multigrad.per_example_jacobian(model, nn.functional.cross_entropy, x, y)
    norms, factors = dp.clip_factors(jac)
    assert (factors < 1).any() and (factors == 1).any()
    plain = _gradkit_grads(
        model, x, y, DPGradient(1e6, 0.0, expected_batch_size=20, accountant=None)
    )
    assert any(not torch.allclose(a, b) for a, b in zip(plain, ref))


def test_noise_equals_opacus_draw_for_draw():
    x, y = _batch(16, 3)
    ref = _opacus_grads(
        _model(1),
        x,
        y,
        max_grad_norm=1.0,
        noise_multiplier=1.3,
        expected_batch_size=16,
        generator=torch.Generator().manual_seed(7),
    )
    dp = DPGradient(
        1.0,
        1.3,
        expected_batch_size=16,
        accountant=None,
        generator=torch.Generator().manual_seed(7),
    )
    got = _gradkit_grads(_model(1), x, y, dp)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _variance_ratio_pvalue(noise: torch.Tensor, std: float) -> float:
    """Two-sided p-value of ``sum(noise^2) / std^2 ~ chi2(n)`` (the noise has mean zero)."""
    n = noise.numel()
    stat = float((noise.double() ** 2).sum()) / std**2
    cdf = float(scipy_stats.chi2.cdf(stat, n))
    return 2 * min(cdf, 1 - cdf)


def test_noise_std_matches_opacus_statistically():
    # noise = noisy gradient - clipped gradient; std should be sigma * C / L per coordinate.
    # Each test below rejects at p < 1e-6: the false-failure probability of each is 1e-6
    # (two of them: 2e-6 in all), over draws of the generators' seeds. With n = 111 * 200
    # coordinates the test rejects a std off by 5%: checked below on the same samples.
    sigma, c, L = 1.7, 0.6, 12
    std = sigma * c / L
    ours, theirs = [], []
    gen_a, gen_b = torch.Generator().manual_seed(11), torch.Generator().manual_seed(12345)
    for step in range(200):
        x, y = _batch(10, 100 + step)
        clean = _opacus_grads(
            _model(2), x, y, max_grad_norm=c, noise_multiplier=0.0, expected_batch_size=L
        )
        noisy_ref = _opacus_grads(
            _model(2),
            x,
            y,
            max_grad_norm=c,
            noise_multiplier=sigma,
            expected_batch_size=L,
            generator=gen_b,
        )
        dp = DPGradient(c, sigma, expected_batch_size=L, accountant=None, generator=gen_a)
        noisy = _gradkit_grads(_model(2), x, y, dp)
        ours.append(torch.cat([(a - b).flatten() for a, b in zip(noisy, clean)]))
        theirs.append(torch.cat([(a - b).flatten() for a, b in zip(noisy_ref, clean)]))
    ours_t, theirs_t = torch.cat(ours), torch.cat(theirs)
    assert ours_t.numel() == 111 * 200
    assert _variance_ratio_pvalue(theirs_t, std) > 1e-6  # Opacus's noise has the claimed std
    assert _variance_ratio_pvalue(ours_t, std) > 1e-6  # and so has ours
    assert _variance_ratio_pvalue(ours_t, 1.05 * std) < 1e-6  # the test can fail
    assert _variance_ratio_pvalue(ours_t, std / 1.05) < 1e-6
    assert dp.backward(_model(2), nn.functional.cross_entropy, *_batch(4, 0)).grad_noise_std == std


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_matches_privacy_engine(accountant):
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    n, batch, sigma, delta = 200, 20, 1.1, 1e-5
    xs, ys = _batch(n, 5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=batch)
    model = _model(3)
    engine = PrivacyEngine(accountant=accountant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pmodel, popt, ploader = engine.make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=1.0,
            poisson_sampling=True,
        )
    steps = 0
    for _ in range(2):
        for x, y in ploader:
            popt.zero_grad()
            nn.functional.cross_entropy(pmodel(x), y).backward()
            popt.step()
            steps += 1
    q = batch / n
    dp = DPGradient(1.0, sigma, expected_batch_size=batch, sample_rate=q, accountant=accountant)
    ours_model = _model(3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = poisson_batch_indices(n, q, gen)
        dp.backward(ours_model, nn.functional.cross_entropy, xs[idx], ys[idx])
    assert dp.steps == steps == 20
    eps_ref = engine.get_epsilon(delta)
    assert dp.epsilon(delta) == pytest.approx(eps_ref, rel=1e-9)
    assert 0.5 < eps_ref < 50  # a meaningful value, not 0 or inf
    # calibration: the sigma for a target epsilon reaches it
    s = noise_multiplier_for(2.0, delta, q, steps, accountant)
    dp2 = DPGradient(1.0, s, expected_batch_size=batch, sample_rate=q, accountant=accountant)
    dp2.accountant.history = [(s, q, steps)]
    assert dp2.epsilon(delta) <= 2.0 and dp2.epsilon(delta) == pytest.approx(2.0, rel=0.05)


def test_aggregator_interface_and_empty_batch():
    model = _model(4)
    x, y = _batch(9, 1)
    dp = DPGradient(0.5, 0.0, expected_batch_size=9, accountant=None)
    jac, params = multigrad.per_example_jacobian(model, nn.functional.cross_entropy, x, y)
    combined = multigrad.aggregate_into_grad(jac, params, dp)
    # written out: clip each row of the flattened Jacobian, sum, divide
    flat = torch.cat([j.reshape(9, -1) for j in jac], dim=1)
    norms = flat.norm(dim=1)
    expected = (flat * (0.5 / (norms + 1e-6)).clamp(max=1)[:, None]).sum(0) / 9
    torch.testing.assert_close(torch.cat([c.flatten() for c in combined]), expected)
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in params]), expected)
    # clipped norm of each example <= C
    assert float((flat * (0.5 / (norms + 1e-6)).clamp(max=1)[:, None]).norm(dim=1).max()) <= 0.5
    # an empty Poisson batch: noise only, and still one accountant step
    dp2 = DPGradient(
        1.0, 2.0, expected_batch_size=4, sample_rate=0.1, generator=torch.Generator().manual_seed(0)
    )
    for p in model.parameters():
        p.grad = None
    info = dp2.backward(model, nn.functional.cross_entropy, x[:0], y[:0])
    assert info.batch_size == 0 and dp2.steps == 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # a subset of parameters
    first = list(model[0].parameters())
    for p in model.parameters():
        p.grad = None
    DPGradient(1.0, 0.0, expected_batch_size=9, accountant=None).backward(
        model, nn.functional.cross_entropy, x, y, params=first
    )
    assert all(p.grad is not None for p in first)
    assert all(p.grad is None for p in model[2].parameters())


def test_state_dict_roundtrip():
    dp = DPGradient(
        1.0,
        1.0,
        expected_batch_size=8,
        sample_rate=0.05,
        generator=torch.Generator().manual_seed(3),
    )
    model = _model(5)
    x, y = _batch(8, 2)
    dp.backward(model, nn.functional.cross_entropy, x, y)
    state = dp.state_dict()
    dp2 = DPGradient(1.0, 1.0, expected_batch_size=8, sample_rate=0.05, generator=torch.Generator())
    dp2.load_state_dict(state)
    assert dp2.epsilon(1e-5) == dp.epsilon(1e-5)
    a = _gradkit_grads(_model(5), x, y, dp)
    b = _gradkit_grads(_model(5), x, y, dp2)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": float("inf")}, "noise_multiplier"),
        ({"expected_batch_size": 0}, "expected_batch_size"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"accountant": "moments"}, "accountant"),
    ],
)
def test_invalid_values(kwargs, name):
    args = {
        "max_grad_norm": 1.0,
        "noise_multiplier": 1.0,
        "expected_batch_size": 8,
        "sample_rate": 0.1,
    } | kwargs
    with pytest.raises(ValueError, match=name):
        DPGradient(args.pop("max_grad_norm"), args.pop("noise_multiplier"), **args)
    with pytest.raises(ValueError, match="sample_rate"):
        DPGradient(1.0, 1.0, expected_batch_size=8)
    with pytest.raises(ValueError, match="delta"):
        DPGradient(1.0, 1.0, expected_batch_size=8, sample_rate=0.1).epsilon(0.0)


def test_example_script_runs(monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    pytest.importorskip("mnist1d")
    script = Path(__file__).parents[2] / "examples" / "private_mnist1d.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--epochs", "1", "--epsilons", "4", "inf"])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.count("\n| ") >= 3 and "non-private" in out
