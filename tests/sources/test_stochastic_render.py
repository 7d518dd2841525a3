"""Stochastic gradient estimation through a non-differentiable 1-D rasterizer (Deliot, Heitz,
Belcour, arXiv 2404.09758): the estimator against the exact gradient of the Gaussian-smoothed
render (closed form), per-pixel against global variance, and fitting box positions."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.sources import perturbed_render, perturbed_render_vjp_samples

from .problems import median_of_means_bound

GROUPS = 100
PIXELS = 64
WIDTH = 0.06  # half-width of every box


def _scene(seed: int = 0, boxes: int = 6):
    """theta = (centres c_1..c_J, intensities a_1..a_J), boxes spread over [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.arange(boxes, dtype=torch.float64) + 0.5) / boxes
    centres = centres + 0.03 * torch.randn(boxes, generator=g, dtype=torch.float64)
    inten = 0.5 + torch.rand(boxes, generator=g, dtype=torch.float64)
    return torch.cat([centres, inten])


def render(theta: torch.Tensor):
    """A hard 1-D rasterizer: pixel p (centre x_p) = sum_j a_j [|x_p - c_j| < w], additive.
    ids: box j covering pixel p lists parameters j and J + j; -1 pads. theta (2J,) or a batch
    (m, 2J)."""
    j = theta.shape[-1] // 2
    c, a = theta[..., None, :j], theta[..., None, j:]
    x = (torch.arange(PIXELS, dtype=theta.dtype) + 0.5) / PIXELS
    cover = (x[:, None] - c).abs() < WIDTH  # (..., P, J)
    image = (cover.to(theta.dtype) * a).sum(-1)
    box = torch.arange(j)
    ids = torch.cat([torch.where(cover, box, -1), torch.where(cover, box + j, -1)], -1)
    return image, ids


def exact_smoothed_vjp(theta: torch.Tensor, g: torch.Tensor, sigma: float) -> torch.Tensor:
    """g^T J_sigma in closed form. E[render(theta + eps)]_p = sum_j a_j P_pj with
    P_pj = Phi((x_p - c_j + w)/sigma) - Phi((x_p - c_j - w)/sigma) (the intensity noise has
    mean 0 and is independent of the centre's), so dE/da_j = P_pj and
    dE/dc_j = a_j (phi((x_p - c_j - w)/sigma) - phi((x_p - c_j + w)/sigma)) / sigma."""
    j = theta.numel() // 2
    c, a = theta[:j], theta[j:]
    x = (torch.arange(PIXELS, dtype=theta.dtype) + 0.5) / PIXELS
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=theta.dtype), 1.0)
    hi = (x[:, None] - c + WIDTH) / sigma
    lo = (x[:, None] - c - WIDTH) / sigma
    p = normal.cdf(hi) - normal.cdf(lo)
    dp_dc = (normal.log_prob(lo).exp() - normal.log_prob(hi).exp()) / sigma
    return torch.cat([g @ (a * dp_dc), g @ p])


def _grad_output(seed: int = 1) -> torch.Tensor:
    return torch.randn(PIXELS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("per_output", [True, False])
def test_unbiased_for_the_smoothed_render(per_output: bool) -> None:
    """Mean of 100,000 one-pair estimates equals the closed-form g^T J_sigma per parameter
    within 2 sigma_hat * 1.1 / sqrt(m) of a median of means (sigma_hat the sample standard
    deviation, inflated 10% for its own error at this sample size); failure probability
    <= 12 exp(-100/8) < 5e-5. The unsmoothed gradient (0 for every centre: the image is
    piecewise constant in them) is rejected."""
    theta, g, sigma = _scene(), _grad_output(), 0.02
    exact = exact_smoothed_vjp(theta, g, sigma)
    est = perturbed_render_vjp_samples(
        theta,
        render,
        g,
        100_000,
        sigma=sigma,
        per_output=per_output,
        batched=True,
        generator=torch.Generator().manual_seed(7),
    )
    m = est.shape[0] // GROUPS
    mom, p_fail = median_of_means_bound(est, GROUPS)
    bound = 2 * 1.1 * est.std(0) / math.sqrt(m)
    assert p_fail < 4e-6
    assert ((mom - exact).abs() <= bound).all(), (mom - exact) / bound
    hard = exact.clone()
    hard[:6] = 0.0
    assert not ((mom - hard).abs() <= bound).all()


def test_per_pixel_variance_below_global() -> None:
    """The paper's point: crediting each pixel only to the parameters its ID map lists cuts
    the variance; here (6 boxes, 12 parameters, 64 pixels) the total variance falls by more
    than 3x, for every parameter, with the same draws."""
    theta, g, sigma = _scene(), _grad_output(), 0.02
    kw = dict(sigma=sigma, batched=True)
    local = perturbed_render_vjp_samples(
        theta, render, g, 20_000, generator=torch.Generator().manual_seed(3), **kw
    )
    glob = perturbed_render_vjp_samples(
        theta,
        render,
        g,
        20_000,
        per_output=False,
        generator=torch.Generator().manual_seed(3),
        **kw,
    )
    v_local, v_glob = local.var(0), glob.var(0)
    assert (v_local < v_glob).all()
    assert v_glob.sum() > 3 * v_local.sum(), (v_glob.sum(), v_local.sum())


def test_more_boxes_widen_the_gap() -> None:
    """Global variance grows with the number of boxes; per-pixel variance does not (the ratio
    of totals at 12 boxes exceeds the ratio at 4)."""

    def ratio(boxes: int) -> float:
        theta, g = _scene(2, boxes), _grad_output()
        gen = dict(sigma=0.02, batched=True)
        loc = perturbed_render_vjp_samples(
            theta, render, g, 5000, generator=torch.Generator().manual_seed(0), **gen
        )
        glo = perturbed_render_vjp_samples(
            theta,
            render,
            g,
            5000,
            per_output=False,
            generator=torch.Generator().manual_seed(0),
            **gen,
        )
        return float(glo.var(0).sum() / loc.var(0).sum())

    assert ratio(12) > 1.5 * ratio(4)


def test_mean_reduction_divides_by_pixel_counts() -> None:
    """reduction='mean' is 'sum' divided, per draw and parameter, by the number of pixels
    crediting it (union of both renders' ID maps), written out here."""
    theta, g = _scene(), _grad_output()
    s = perturbed_render_vjp_samples(
        theta, render, g, 3, sigma=0.02, generator=torch.Generator().manual_seed(4)
    )
    mean = perturbed_render_vjp_samples(
        theta,
        render,
        g,
        3,
        sigma=0.02,
        reduction="mean",
        generator=torch.Generator().manual_seed(4),
    )
    gen = torch.Generator().manual_seed(4)
    for k in range(3):
        eps = 0.02 * torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        y_p, ids_p = render(theta + eps)
        y_m, ids_m = render(theta - eps)
        counts = torch.zeros(theta.numel(), dtype=theta.dtype)
        by_hand = torch.zeros(theta.numel(), dtype=theta.dtype)
        for p in range(PIXELS):
            listed = set(ids_p[p].tolist()) | set(ids_m[p].tolist())
            listed.discard(-1)
            for i in listed:
                counts[i] += 1
                by_hand[i] += g[p] * (y_p[p] - y_m[p]) / (2 * 0.02**2) * eps[i]
        torch.testing.assert_close(s[k], by_hand, rtol=1e-12, atol=1e-12)
        expected = torch.where(counts > 0, by_hand / counts.clamp_min(1), torch.zeros_like(by_hand))
        torch.testing.assert_close(mean[k], expected, rtol=1e-12, atol=1e-12)


def test_batched_render_equals_one_at_a_time() -> None:
    """batched=True with chunk=1 draws and renders exactly as the unbatched loop."""
    theta, g = _scene(), _grad_output()
    one = perturbed_render_vjp_samples(
        theta, render, g, 5, sigma=0.02, generator=torch.Generator().manual_seed(2)
    )
    batched = perturbed_render_vjp_samples(
        theta,
        render,
        g,
        5,
        sigma=0.02,
        batched=True,
        chunk=1,
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(batched, one, rtol=1e-12, atol=1e-12)


def test_autograd_function_is_the_sample_mean() -> None:
    """perturbed_render's backward equals the mean of `samples` draws with the same generator,
    chained with dLoss/doutput (here g); the forward pass is the hard render."""
    theta = _scene().requires_grad_(True)
    g = _grad_output()
    y = perturbed_render(
        theta, render, sigma=0.02, samples=5, generator=torch.Generator().manual_seed(9)
    )
    assert torch.equal(y, render(theta.detach())[0])
    (y * g).sum().backward()
    expected = perturbed_render_vjp_samples(
        theta, render, g, 5, sigma=0.02, generator=torch.Generator().manual_seed(9)
    ).mean(0)
    torch.testing.assert_close(theta.grad, expected, rtol=1e-12, atol=1e-12)


def test_fits_box_positions_with_adam() -> None:
    """Fit 4 box centres (intensities fixed at the target's) to a target image from starts up to
    0.04 away (less than a box's half-width): Adam on the estimated gradient of the squared
    error brings every centre within one pixel (1/64) of its target in 150 steps."""
    j = 4
    target_theta = torch.tensor([0.15, 0.4, 0.62, 0.85, 1.0, 0.7, 1.2, 0.9], dtype=torch.float64)
    target, _ = render(target_theta)
    start = target_theta[:j] + torch.tensor([0.04, -0.035, 0.03, -0.04], dtype=torch.float64)
    centres = start.clone().requires_grad_(True)
    inten = target_theta[j:]
    opt = torch.optim.Adam([centres], lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def render_centres(c):
        image, ids = render(torch.cat([c, inten.expand(*c.shape[:-1], j)], -1))
        return image, torch.where(ids >= j, -1, ids)  # only the centres are parameters

    for _ in range(150):
        opt.zero_grad()
        image = perturbed_render(
            centres, render_centres, sigma=0.01, samples=4, batched=True, generator=gen
        )
        ((image - target) ** 2).sum().backward()
        opt.step()
    err = (centres.detach() - target_theta[:j]).abs()
    assert (err < 1 / PIXELS).all(), err
    assert (err < (start - target_theta[:j]).abs() / 2).all()


def test_invalid_arguments() -> None:
    theta = _scene()
    g = _grad_output()
    with pytest.raises(ValueError, match="sigma"):
        perturbed_render(theta, render, sigma=0.0)
    with pytest.raises(ValueError, match="samples"):
        perturbed_render(theta, render, sigma=0.1, samples=0)
    with pytest.raises(ValueError, match="reduction"):
        perturbed_render(theta, render, sigma=0.1, reduction="max")
    with pytest.raises(ValueError, match="ID map"):
        perturbed_render_vjp_samples(theta, lambda t: (render(t)[0], None), g, 1, sigma=0.1)
    with pytest.raises(ValueError, match="ids"):
        perturbed_render_vjp_samples(
            theta, lambda t: (render(t)[0], render(t)[1] + 50), g, 1, sigma=0.1
        )
    with pytest.raises(ValueError, match="elements"):
        perturbed_render_vjp_samples(theta, render, g[:10], 1, sigma=0.1)
