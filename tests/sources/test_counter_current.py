"""Counter-current learning (Kao, Hariharan, arXiv 2409.19841): the per-layer update against the
local losses written out with explicit detaches, no gradient across layers, and learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.functional import cross_entropy, mse_loss, one_hot

from gradkit.sources import Backprop, CounterCurrent, mirror_feedback


def _problem(seed: int = 0, act=nn.Tanh):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), act(), nn.Linear(6, 4), act(), nn.Linear(4, 3)).double()
    x = torch.randn(9, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    return model, (x, y)


def _by_hand(model, feedback, batch, scale, pairing):
    """Each network's gradient, from the rule written out: every layer's input detached, the
    other network's activation detached in each pair, one autograd.grad per local loss."""
    x, y = batch
    onehot = one_hot(y, 3).double()
    if pairing == "class":
        top = torch.eye(3, dtype=torch.float64)

        def pair(a, b):
            return mse_loss(a @ b.T, onehot)
    else:
        top = onehot

        def pair(a, b):
            return mse_loss(a, b)

    lins = [m for m in model if isinstance(m, nn.Linear)]
    f = [lambda h: torch.tanh(lins[0](h)), lambda h: torch.tanh(lins[1](h)), lins[2]]
    a = [x]
    for fl in f:
        a.append(fl(a[-1].detach()))
    g0 = feedback[0]
    g1_lin, g2_lin = feedback[1][0], feedback[2][0]
    g = [g0, lambda h: torch.tanh(g1_lin(h)), lambda h: torch.tanh(g2_lin(h))]
    b = [None, None, None, top]
    for k in (3, 2, 1):
        b[k - 1] = g[k - 1](b[k].detach())
    grads = {}
    # forward block k (k = 1, 2) from the pair at layer k; block 3 from the task loss
    for k, lin in ((1, lins[0]), (2, lins[1])):
        local = scale * pair(a[k], b[k].detach())
        grads[lin.weight], grads[lin.bias] = torch.autograd.grad(local, [lin.weight, lin.bias])
    task = cross_entropy(a[3], y)
    grads[lins[2].weight], grads[lins[2].bias] = torch.autograd.grad(
        task, [lins[2].weight, lins[2].bias]
    )
    # feedback g_k from the pair at layer k - 1
    for k, lin in ((1, g0), (2, g1_lin), (3, g2_lin)):
        local = scale * pair(a[k - 1].detach(), b[k - 1])
        grads[lin.weight], grads[lin.bias] = torch.autograd.grad(local, [lin.weight, lin.bias])
    return grads, task.detach()


@pytest.mark.parametrize("pairing", ["class", "example"])
@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_equals_local_losses_written_out(scale: float, pairing: str) -> None:
    model, batch = _problem()
    source = CounterCurrent(model, pairing=pairing, scale=scale)
    source.feedback.double()
    loss = source.compute(model, cross_entropy, batch)
    expected, task = _by_hand(model, source.feedback, batch, scale, pairing)
    params = [*model.parameters(), *source.feedback.parameters()]
    assert len(expected) == len(params) == 12
    for p in params:
        torch.testing.assert_close(p.grad, expected[p], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss, task)
    torch.testing.assert_close(loss, cross_entropy(model(batch[0]), batch[1]).detach())
    assert len(source.last_layer_losses) == 3
    assert (source.last_cost.forward, source.last_cost.backward) == (2, 1)


def test_custom_pair_loss_and_float_targets() -> None:
    """Regression targets are b_L as given; the pair loss is the caller's."""
    model, (x, _) = _problem(1)
    y = torch.randn(9, 3, dtype=torch.float64)

    def pair(a, b):
        return (a - b).abs().mean()

    source = CounterCurrent(model, pairing="example", scale=0.5, pair_loss=pair)
    source.feedback.double()
    source.compute(model, mse_loss, (x, y))
    lins = [m for m in model if isinstance(m, nn.Linear)]
    # the middle block against the rule: f_2(sg(a_1)) vs sg(b_2), b_2 = g_3(sg(y))
    a1 = torch.tanh(lins[0](x)).detach()
    b2 = torch.tanh(source.feedback[2][0](y)).detach()
    (gw,) = torch.autograd.grad(0.5 * pair(torch.tanh(lins[1](a1)), b2), [lins[1].weight])
    torch.testing.assert_close(lins[1].weight.grad, gw, rtol=1e-12, atol=1e-14)


def _grads(model, source, batch):
    source.compute(model, cross_entropy, batch)
    return [p.grad.clone() for p in [*model.parameters(), *source.feedback.parameters()]]


def test_no_gradient_across_layers() -> None:
    """Changing the top block (so the top loss changes) leaves every other gradient unchanged
    bit for bit; changing forward block 2 changes only its own pair's gradients (block 2 and
    g_3); end-to-end backprop of the same top loss does change block 1's gradient."""
    model, batch = _problem(2)
    source = CounterCurrent(model)
    source.feedback.double()
    before = _grads(model, source, batch)
    names = [n for n, _ in model.named_parameters()] + [
        "fb." + n for n, _ in source.feedback.named_parameters()
    ]
    with torch.no_grad():
        model[4].weight.mul_(1.7).add_(0.1)
    after = _grads(model, source, batch)
    for n, b, a in zip(names, before, after):
        if n.startswith("4."):
            assert not torch.equal(a, b), n
        else:
            assert torch.equal(a, b), n
    with torch.no_grad():
        model[2].weight.mul_(0.5)
    moved = _grads(model, source, batch)
    for n, b, a in zip(names, after, moved):
        changed = not torch.equal(a, b)
        # block 2's own pair, g_3 (it pairs with a_2) and block 3 (its input a_2 changed)
        assert changed == (n.startswith(("2.", "4.", "fb.2."))), n
    # with backprop, the top layer's change reaches the first layer
    bp = Backprop()
    bp.compute(model, cross_entropy, batch)
    first = model[0].weight.grad.clone()
    with torch.no_grad():
        model[4].weight.mul_(1.7)
    bp.compute(model, cross_entropy, batch)
    assert not torch.equal(model[0].weight.grad, first)


def _clusters(pairing: str) -> tuple[float, list[float], list[float]]:
    torch.manual_seed(0)
    centers = 2.5 * torch.randn(3, 5)
    y = torch.randint(0, 3, (300,))
    x = centers[y] + torch.randn(300, 5)
    model = nn.Sequential(
        nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )
    source = CounterCurrent(model, pairing=pairing)
    opt = torch.optim.Adam([*model.parameters(), *source.feedback.parameters()], lr=3e-3)
    source.compute(model, cross_entropy, (x, y))
    first = [float(p) for p in source.last_layer_losses]
    for _ in range(300):
        source.compute(model, cross_entropy, (x, y))
        opt.step()
    acc = (model(x).argmax(1) == y).float().mean().item()
    return acc, first, [float(p) for p in source.last_layer_losses]


def test_learns_a_cluster_task() -> None:
    """CCL (Adam on both networks, 300 steps) classifies 3 Gaussian clusters in 5-D above 95%
    with the class pairing, and its pair losses fall; the per-example squared-error pairing
    collapses (pair losses near 0) and stays far lower (65% measured)."""
    acc, first, last = _clusters("class")
    assert acc > 0.95, acc
    assert all(b < a for a, b in zip(first[1:], last[1:])), (first, last)
    acc_ex, _, last_ex = _clusters("example")
    assert acc_ex < acc - 0.2 and max(last_ex[1:]) < 0.01, (acc_ex, last_ex)


def test_mirror_feedback_shapes_and_accumulate() -> None:
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    fb = mirror_feedback(model)
    assert isinstance(fb[0], nn.Linear) and tuple(fb[0].weight.shape) == (5, 7)
    assert isinstance(fb[1][1], nn.ReLU) and tuple(fb[1][0].weight.shape) == (7, 2)
    source = CounterCurrent(model, fb)
    model[0].bias.requires_grad_(False)
    batch = (torch.randn(4, 5), torch.randint(0, 2, (4,)))
    trained = [p for p in [*model.parameters(), *fb.parameters()] if p.requires_grad]
    source.compute(model, cross_entropy, batch)
    once = [p.grad.clone() for p in trained]
    assert model[0].bias.grad is None
    source.compute(model, cross_entropy, batch, accumulate=True)
    for p, g in zip(trained, once):
        torch.testing.assert_close(p.grad, 2 * g)


def test_invalid_arguments() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="scale"):
        CounterCurrent(model, scale=0.0)
    with pytest.raises(ValueError, match="feedback"):
        CounterCurrent(model, [nn.Linear(2, 4)])
    with pytest.raises(ValueError, match="pair_loss"):
        CounterCurrent(model, pair_loss=3)
    with pytest.raises(ValueError, match="pairing"):
        CounterCurrent(model, pairing="layer")
    with pytest.raises(ValueError, match="targets"):
        CounterCurrent(model).compute(model, mse_loss, (torch.randn(2, 3), torch.randn(2, 2)))
    with pytest.raises(ValueError, match="nn.Linear"):
        CounterCurrent(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2)))
    source = CounterCurrent(model)
    with pytest.raises(ValueError, match="another model"):
        source.compute(nn.Sequential(nn.Linear(3, 2)), cross_entropy, (torch.randn(2, 3), None))


def test_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "examples" / "counter_current_mnist1d.py"
    argv = [str(script), "--steps", "2", "--batch", "8", "--every", "1"]
    monkeypatch.setattr(
        sys, "argv", [*argv, "--sources", "backprop", "ccl", "ccl_example", "forward_activity"]
    )
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for name in ("backprop", "ccl ", "ccl_example", "forward_activity"):
        assert name in out


def test_example_plot_draws_one_curve_per_source(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's ``--plot`` (which made docs/figures/counter_current_mnist1d.png) draws one
    labelled accuracy curve per source, over the evaluated steps, and writes the image."""
    import runpy
    import sys
    from pathlib import Path

    import matplotlib.figure
    import matplotlib.image

    saved = []
    original = matplotlib.figure.Figure.savefig

    def capture(fig, *args, **kwargs):
        saved.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    script = Path(__file__).parents[2] / "examples" / "counter_current_mnist1d.py"
    image = tmp_path / "curves.png"
    argv = [str(script), "--steps", "2", "--batch", "8", "--every", "1", "--plot", str(image)]
    monkeypatch.setattr(sys, "argv", [*argv, "--sources", "backprop", "ccl"])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    (ax,) = saved[0].axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["backprop", "counter-current (class pairing)"]
    for line in lines:
        steps, accs = line.get_data()
        assert len(steps) == len(accs) >= 2 and all(0.0 <= a <= 1.0 for a in accs)
    assert ax.get_ylabel() == "test accuracy"
    pixels = matplotlib.image.imread(image)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0
