"""Training diagnostics on MNIST-1D: sharpness vs 2/lr, loss landscapes, mode connectivity.

Trains a small tanh MLP on 1000 MNIST-1D examples with full-batch gradient descent and
tracks the sharpness (top Hessian eigenvalue) against the stability edge 2/lr (Cohen et al.,
arXiv:2103.00065). Then draws the loss landscape around the trained model along two
filter-normalized random directions (Li et al., arXiv:1712.09913) and along the top two
Hessian eigenvectors, computes the roughness index of 1-D slices, and interpolates between
two independently trained MLPs before and after weight matching (Git Re-Basin,
arXiv:2209.04836).

Runs in about a minute on 2 CPU cores::

    python examples/diagnostics_mnist1d.py --out diagnostics_out

Figures written to ``--out``: sharpness.png, landscape_contour.png, landscape_surface.png,
landscape_hessian.png, interpolation.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.data import load_mnist1d
from gradkit.diagnostics.connectivity import linear_interpolation
from gradkit.diagnostics.landscape import hessian_landscape_2d, random_landscape_2d
from gradkit.diagnostics.landscape_plots import plot_contour, plot_interpolation, plot_surface
from gradkit.diagnostics.roughness import roughness_index
from gradkit.diagnostics.sharpness import SharpnessTracker, plot_sharpness
from gradkit.diagnostics.weight_matching import align


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(-1) == y).float().mean()


def mlp(seed: int, hidden: int = 64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(40, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 10),
    )


def train_gd(model: nn.Module, x, y, lr: float, steps: int, tracker=None) -> None:
    """Full-batch gradient descent, measuring sharpness with ``tracker`` on the way."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps + 1):
        if tracker is not None:
            rec = tracker.update(step, lr=opt)
            if rec is not None and step % 100 == 0:
                print(f"  step {step:4d}  sharpness {rec.sharpness:6.2f}  (2/lr = {2 / lr:.2f})")
        if step == steps:
            break
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("diagnostics_out"))
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--grid", type=int, default=21, help="points per axis of 2-D plots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.time()

    x_all, y_all, x_test, y_test = load_mnist1d()
    x, y = x_all[:1000], y_all[:1000]
    data = (x, y)

    # 1. sharpness against the stability edge 2/lr during full-batch GD
    print(f"training with full-batch GD, lr={args.lr}, {args.steps} steps")
    model = mlp(0)
    tracker = SharpnessTracker(model, F.cross_entropy, data, every=10, tol=1e-3, max_iter=40)
    train_gd(model, x, y, args.lr, args.steps, tracker)
    plot_sharpness(
        tracker.history,
        args.out / "sharpness.png",
        title=f"MNIST-1D MLP, full-batch GD, lr={args.lr}: sharpness vs 2/lr",
    )
    model.eval()
    with torch.no_grad():
        train_acc = float(accuracy(model(x), y))
        test_acc = float(accuracy(model(x_test), y_test))
    print(f"  train acc {train_acc:.3f}  test acc {test_acc:.3f}  ({time.time() - t0:.0f}s)")

    # 2. 2-D landscape along filter-normalized random directions
    grid = np.linspace(-1.0, 1.0, args.grid)
    surf = random_landscape_2d(model, F.cross_entropy, data, grid, seed=0)
    title = "loss, filter-normalized random directions"
    plot_contour(surf, log=True, title=title).savefig(args.out / "landscape_contour.png", dpi=120)
    plot_surface(surf, title=title).savefig(args.out / "landscape_surface.png", dpi=120)
    print(f"  random 2-D landscape done ({time.time() - t0:.0f}s)")

    # 3. 2-D landscape along the top-2 Hessian eigenvectors (unit vectors: distances in
    # parameter space; scaled so that the top direction rises by a few units of loss)
    vals_probe = tracker.history[-1].sharpness
    radius = float(np.sqrt(8.0 / max(vals_probe, 1e-3)))
    hsurf, vals = hessian_landscape_2d(model, F.cross_entropy, data, radius * grid)
    plot_contour(
        hsurf, title=f"loss along Hessian eigenvectors (lambda = {vals[0]:.2f}, {vals[1]:.2f})"
    ).savefig(args.out / "landscape_hessian.png", dpi=120)
    print(f"  Hessian 2-D landscape done, top eigenvalues {vals[0]:.2f}, {vals[1]:.2f}")

    ri = roughness_index(model, F.cross_entropy, data, num_directions=8, seed=1)
    print(f"  roughness index {ri.index:.4f} (mean normalized TV {ri.mean:.2f})")

    # 4. mode connectivity between two MLPs trained from different seeds (Adam, minibatches)
    def train_adam(seed: int) -> nn.Module:
        m = mlp(seed, hidden=128)
        opt = torch.optim.Adam(m.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(8):
            order = torch.randperm(len(x_all), generator=gen)
            for i in range(0, len(x_all), 100):
                b = order[i : i + 100]
                opt.zero_grad()
                F.cross_entropy(m(x_all[b]), y_all[b]).backward()
                opt.step()
        return m

    a, b = train_adam(1), train_adam(2)
    b_aligned, _ = align(a, b)
    alphas = np.linspace(0, 1, 21)
    test = (x_test, y_test)
    naive = linear_interpolation(a, b, F.cross_entropy, test, alphas, metric_fn=accuracy)
    aligned = linear_interpolation(a, b_aligned, F.cross_entropy, test, alphas, metric_fn=accuracy)
    plot_interpolation(
        {"naive": naive, "weight matching": aligned},
        title="MNIST-1D MLPs from two seeds: test loss along the line",
    ).savefig(args.out / "interpolation.png", dpi=120)
    print(f"  test-loss barrier: naive {naive.barrier:.3f}, after alignment {aligned.barrier:.3f}")
    print(f"done in {time.time() - t0:.0f}s; figures in {args.out}")


if __name__ == "__main__":
    main()
