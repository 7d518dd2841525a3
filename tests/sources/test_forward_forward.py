"""Forward-Forward (Hinton, arXiv 2212.13345): the layer-local goodness loss and every layer's
gradient equal the rule written out by hand (float64), no gradient crosses layers, and FF learns
a task that predicting by goodness can solve."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.functional import one_hot

from gradkit.sources import ForwardForward


def _data(n: int, features: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _model(sizes: list[int], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers).double()


def _sigmoid(z: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-z))


@pytest.mark.parametrize("embedding", ["concat", "replace"])
@pytest.mark.parametrize("threshold", [2.0, 30.0])
def test_matches_rule_written_out(embedding: str, threshold: float) -> None:
    c, f = 4, 6
    width_in = f + c if embedding == "concat" else f
    model = _model([width_in, 7, 5, 3])
    lins = [m for m in model if isinstance(m, nn.Linear)]
    x, y = _data(9, f, c)
    source = ForwardForward(
        model,
        c,
        threshold=threshold,
        embedding=embedding,
        generator=torch.Generator().manual_seed(5),
    )
    loss = source.compute(model, None, (x, y))

    # the wrong labels: uniform over the others, from the generator
    neg = (y + torch.randint(1, c, y.shape, generator=torch.Generator().manual_seed(5))) % c
    assert torch.equal(source.last_negative_labels, neg) and not (neg == y).any()

    def embed(labels):
        code = one_hot(labels, c).double()
        return torch.cat([x, code], 1) if embedding == "concat" else torch.cat([code, x[:, c:]], 1)

    n = x.shape[0]
    expected_losses, expected_grads = [], {}
    with torch.no_grad():
        xin = {"pos": embed(y), "neg": embed(neg)}
        for lin in lins:
            theta = threshold
            dw = torch.zeros_like(lin.weight)
            db = torch.zeros_like(lin.bias)
            layer_loss = 0.0
            nxt = {}
            for kind, sign in (("pos", -1.0), ("neg", 1.0)):
                a = xin[kind] @ lin.weight.T + lin.bias
                h = a.clamp_min(0)
                g = (h**2).sum(1)
                # loss = mean softplus(sign * (G - theta)); d/dG = sign * sigmoid(sign (G - theta)) / n
                z = sign * (g - theta)
                layer_loss += torch.log1p(torch.exp(z)).mean()
                dg = sign * _sigmoid(z) / n
                delta = dg[:, None] * 2 * h * (a > 0)  # dG/dh = 2h, relu'
                dw += delta.T @ xin[kind]
                db += delta.sum(0)
                nxt[kind] = h / (h.norm(dim=1, keepdim=True) + 1e-8)  # length-normalized input
            expected_losses.append(layer_loss)
            expected_grads[lin.weight], expected_grads[lin.bias] = dw, db
            xin = nxt
    for p, g in expected_grads.items():
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(torch.stack(source.last_layer_losses), torch.stack(expected_losses))
    torch.testing.assert_close(loss, sum(expected_losses))
    assert source.last_cost.forward == 2 and source.last_cost.backward == 1


def test_no_gradient_crosses_layers() -> None:
    c = 3
    model = _model([8 + c, 10, 9, 6])
    lins = [m for m in model if isinstance(m, nn.Linear)]
    x, y = _data(12, 8, c)

    def grads_after(change) -> list[torch.Tensor]:
        change()
        source = ForwardForward(model, c, generator=torch.Generator().manual_seed(1))
        source.compute(model, None, (x, y))
        return [p.grad.clone() for p in model.parameters()]

    before = grads_after(lambda: None)
    with torch.no_grad():
        # change the later layers: the first layer's gradient is unchanged, bit for bit
        after = grads_after(lambda: (lins[1].weight.mul_(-2.0), lins[2].bias.add_(3.0)))
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.equal(before[2], after[2])  # the changed layer's own gradient moves
    # changing only the last layer leaves the first two layers' gradients unchanged
    with torch.no_grad():
        again = grads_after(lambda: lins[2].weight.normal_())
    for i in range(4):
        assert torch.equal(after[i], again[i])
    assert not torch.equal(after[4], again[4])
    # and the gradient is not backprop's through the stack: the summed FF loss differentiated
    # end to end (no detach) differs for the first layer
    source = ForwardForward(model, c, generator=torch.Generator().manual_seed(1))
    source.compute(model, None, (x, y))
    local = lins[0].weight.grad.clone()
    neg = source.last_negative_labels
    model.zero_grad()
    total = 0.0
    for labels, sign in ((y, -1.0), (neg, 1.0)):
        acts = source.layer_activities(source.embed(x, labels), detach=False)
        for h in acts:
            total = total + nn.functional.softplus(sign * ((h**2).sum(1) - 2.0)).mean()
    total.backward()
    assert not torch.allclose(lins[0].weight.grad, local)


def test_learns_and_predicts_by_goodness() -> None:
    """A linearly separable 3-class task: FF trained with Adam predicts by goodness well above
    chance, and its layer losses fall."""
    torch.manual_seed(0)
    c, f = 3, 10
    g = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(c, f, generator=g)
    y = torch.randint(0, c, (600,), generator=g)
    x = centers[y] + torch.randn(600, f, generator=g)
    model = nn.Sequential(nn.Linear(f + c, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    source = ForwardForward(model, c, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = source.compute(model, None, (x, y)).item()
    for _ in range(150):
        source.compute(model, None, (x, y))
        opt.step()
    last = source.compute(model, None, (x, y)).item()
    acc = (source.predict(x) == y).double().mean().item()
    assert last < 0.5 * first
    assert acc > 0.9
    assert source.goodness(x).shape == (600, c)


def test_bad_arguments() -> None:
    model = _model([5, 4])
    with pytest.raises(ValueError, match="num_classes"):
        ForwardForward(model, 1)
    with pytest.raises(ValueError, match="threshold"):
        ForwardForward(model, 2, threshold=float("nan"))
    with pytest.raises(ValueError, match="embedding"):
        ForwardForward(model, 2, embedding="add")
    source = ForwardForward(model, 2)
    with pytest.raises(ValueError, match="model"):
        source.compute(_model([5, 4]), None, _data(3, 3, 2))
    with pytest.raises(ValueError, match="num_classes"):
        replace = ForwardForward(_model([2, 4]), 3, embedding="replace")
        replace.embed(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))


def test_accumulate_and_closure() -> None:
    c = 3
    model = _model([5 + c, 6, 4])
    x, y = _data(8, 5, c)
    source = ForwardForward(model, c, generator=torch.Generator().manual_seed(0))
    source.compute(model, None, (x, y))
    once = [p.grad.clone() for p in model.parameters()]
    source.generator = torch.Generator().manual_seed(0)
    closure = source.closure(model, None, (x, y), accumulate=True)
    closure()
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g)
    assert source.cost.calls == 2 and source.cost.forward == 4
