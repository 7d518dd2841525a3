"""NoProp, discrete time (Li, Teh, Pascanu, arXiv 2503.24369): the per-block denoising losses and
every block's gradient equal the rule written out (float64, same noise draws), blocks exchange no
gradient, inference follows the posterior recursion, and NoProp learns a small task."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.functional import cross_entropy, one_hot, softmax

from gradkit.sources import NoProp, NoPropNet, cosine_alpha_bar


def _setup(steps: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    net = NoPropNet.mlp(in_features=5, num_classes=3, steps=steps, hidden=8).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=g)
    return net, x, y


def test_schedule() -> None:
    ab = cosine_alpha_bar(10)
    assert ab.shape == (11,) and bool((ab[1:] > ab[:-1]).all())
    torch.testing.assert_close(ab[5], torch.tensor(0.5, dtype=torch.float64))
    assert ab[0] == 1e-3 and ab[-1] == 1 - 1e-3


def test_losses_and_gradients_match_rule_written_out() -> None:
    net, x, y = _setup()
    eta, steps = 0.3, net.steps
    source = NoProp(net, eta=eta, generator=torch.Generator().manual_seed(9))
    total = source.compute(net, None, (x, y))
    got = {n: p.grad.clone() for n, p in net.named_parameters()}

    noise = torch.randn(
        (steps + 1, 7, 3), generator=torch.Generator().manual_seed(9), dtype=torch.float64
    )
    ab = cosine_alpha_bar(steps)
    snr = ab / (1 - ab)
    u = one_hot(y, 3).double()
    expected_losses = []
    for t in range(1, steps + 1):
        z = ab[t - 1].sqrt() * u + (1 - ab[t - 1]).sqrt() * noise[t - 1]  # z_{t-1} ~ q(.|y)
        block = net.blocks[t - 1]
        lin = [m for m in block.net if isinstance(m, torch.nn.Linear)]
        h = torch.cat([x, z], 1)
        for i, m in enumerate(lin):
            h = h @ m.weight.T + m.bias
            if i < 2:
                h = h.clamp_min(0)
        err = softmax(h, 1) - u
        loss_t = eta / 2 * (snr[t] - snr[t - 1]) * (err**2).sum(1).mean()
        expected_losses.append(loss_t)
        # this block's gradient is the gradient of its own loss alone
        grads = torch.autograd.grad(loss_t, list(block.parameters()))
        for (n, _), g in zip(block.named_parameters(), grads):
            torch.testing.assert_close(got[f"blocks.{t - 1}.{n}"], g, rtol=1e-12, atol=1e-15)
    z_last = ab[steps].sqrt() * u + (1 - ab[steps]).sqrt() * noise[steps]
    out_loss = cross_entropy(z_last @ net.classifier.weight.T + net.classifier.bias, y)
    gw, gb = torch.autograd.grad(out_loss, [net.classifier.weight, net.classifier.bias])
    torch.testing.assert_close(got["classifier.weight"], gw, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got["classifier.bias"], gb, rtol=1e-12, atol=1e-15)
    for a, b in zip(source.last_block_losses, expected_losses):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(total, (sum(expected_losses) + out_loss).detach())
    assert source.last_cost.forward == 1 and source.last_cost.backward == 1
    # the weights: eta/2 (SNR(t) - SNR(t-1)), and their sum telescopes
    torch.testing.assert_close(source.weights().sum(), eta / 2 * (snr[-1] - snr[0]))


def test_blocks_exchange_no_gradient() -> None:
    net, x, y = _setup(steps=3)

    def grads() -> dict[str, torch.Tensor]:
        source = NoProp(net, generator=torch.Generator().manual_seed(2))
        source.compute(net, None, (x, y))
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    before = grads()
    with torch.no_grad():
        for p in net.blocks[1].parameters():
            p.mul_(-1.5)
    after = grads()
    for n in before:
        same = torch.equal(before[n], after[n])
        if n.startswith("blocks.1."):
            assert not same, n
        else:
            assert same, n  # other blocks and the classifier: bit for bit unchanged


def test_inference_follows_posterior_recursion() -> None:
    net, x, y = _setup()
    ab = cosine_alpha_bar(net.steps)
    z = torch.zeros(7, 3, dtype=torch.float64)
    with torch.no_grad():
        for t in range(1, net.steps + 1):
            a_, b_ = ab[t], ab[t - 1]
            coef_u = a_.sqrt() * (1 - b_ / a_) / (1 - b_)
            coef_z = (b_ / a_).sqrt() * (1 - a_) / (1 - b_)
            z = coef_u * softmax(net.blocks[t - 1](x, z), 1) + coef_z * z
            c = (1 - a_) * (1 - b_ / a_) / (1 - b_)
            torch.testing.assert_close(
                torch.tensor(net.coefficients(t)).double(), torch.stack([coef_u, coef_z, c])
            )
        torch.testing.assert_close(net(x), net.classifier(z))
    # the coefficients are those of the Gaussian posterior q(z_t | z_{t-1}, y): with z_{t-1}
    # ~ q(z_{t-1} | y), a_t u + b_t z_{t-1} has mean sqrt(A) u and variance b^2 (1 - B) + c
    # = 1 - A, the marginal q(z_t | y)
    for t in range(1, net.steps + 1):
        a, b, c = net.coefficients(t)
        big_a, big_b = float(ab[t]), float(ab[t - 1])
        assert math.isclose(a + b * math.sqrt(big_b), math.sqrt(big_a), rel_tol=1e-12)
        assert math.isclose(b * b * (1 - big_b) + c, 1 - big_a, rel_tol=1e-12)


def test_learns() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centers = 2 * torch.randn(3, 6, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    x = centers[y] + torch.randn(300, 6, generator=g)
    net = NoPropNet.mlp(6, 3, steps=4, hidden=32)
    source = NoProp(net, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        source.compute(net, None, (x, y))
        opt.step()
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).double().mean().item()
    assert acc > 0.9


def test_bad_arguments() -> None:
    net, x, y = _setup()
    with pytest.raises(ValueError, match="eta"):
        NoProp(net, eta=0.0)
    with pytest.raises(ValueError, match="model"):
        NoProp(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha_bar"):
        NoPropNet(list(net.blocks), 3, alpha_bar=torch.linspace(0.9, 0.1, 5))
    with pytest.raises(ValueError, match="num_classes"):
        NoPropNet(list(net.blocks), 1)
    with pytest.raises(ValueError, match="model"):
        NoProp(net).compute(_setup()[0], None, (x, y))


def test_sampled_inference_and_accumulate() -> None:
    net, x, y = _setup()
    with torch.no_grad():
        got = net(x, sample=True, generator=torch.Generator().manual_seed(4))
        g = torch.Generator().manual_seed(4)
        z = torch.randn(7, 3, generator=g, dtype=torch.float64)  # z_0 ~ N(0, I)
        for t in range(1, net.steps + 1):
            a, b, c = net.coefficients(t)
            z = a * softmax(net.blocks[t - 1](x, z), 1) + b * z
            z = z + math.sqrt(c) * torch.randn(7, 3, generator=g, dtype=torch.float64)
        torch.testing.assert_close(got, net.classifier(z))
    # accumulate=True adds to .grad, as a second backward would
    source = NoProp(net, generator=torch.Generator().manual_seed(0))
    source.compute(net, None, (x, y))
    once = [p.grad.clone() for p in net.parameters()]
    source = NoProp(net, generator=torch.Generator().manual_seed(0))
    source.compute(net, None, (x, y))
    source.generator = torch.Generator().manual_seed(0)
    source.compute(net, None, (x, y), accumulate=True)
    for p, g1 in zip(net.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g1)
