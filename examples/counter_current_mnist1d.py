"""Counter-current learning (and activity-perturbed forward gradients) against backprop on
MNIST-1D: test accuracy over training.

gradkit's MNIST-1D MLP (40 -> 256 -> 256 -> 10, ReLU) trained by Adam with each gradient source
(batch 100); counter-current learning trains the mirrored feedback network alongside
(``pairing="class"``, and optionally ``"example"``); ``forward_activity`` is
``ActivityPerturbedForwardGradient`` with one direction per block. Prints the final test accuracies and, with
``--plot``, draws accuracy against steps::

    python examples/counter_current_mnist1d.py
    python examples/counter_current_mnist1d.py --steps 3000 --seeds 0 1 2 --plot fig.png

Learning rates (seed 0): backprop 3e-3, the better of {1e-3, 3e-3} at 1000 steps (0.652, 0.630);
counter-current learning 1e-3, the better of {3e-4, 1e-3} at 3000 steps (0.538, 0.547); 3e-3 was
worse than 1e-3 at 1000 steps (0.289, 0.407); forward_activity 1e-3, the best of {1e-4, 3e-4,
1e-3, 3e-3} at 1000 steps (0.228, 0.280, 0.330, 0.304). The table in docs/gradient_sources.md is
``--sources backprop ccl ccl_example --steps 3000 --seeds 0 1 2 --every 100``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.functional import cross_entropy

from gradkit.bench.tasks.builtin.mnist1d import mnist1d_mlp
from gradkit.data import load_mnist1d
from gradkit.sources import ActivityPerturbedForwardGradient, Backprop, CounterCurrent

LR = {"backprop": 3e-3, "ccl": 1e-3, "ccl_example": 1e-3, "forward_activity": 1e-3}


def run(name: str, seed: int, steps: int, batch: int, every: int, data) -> dict:
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    model = mnist1d_mlp()
    if name == "backprop":
        source, extra = Backprop(), []
    elif name == "forward_activity":
        gen = torch.Generator().manual_seed(1000 + seed)
        source, extra = ActivityPerturbedForwardGradient(model, generator=gen), []
    else:
        pairing = "class" if name == "ccl" else "example"
        source = CounterCurrent(model, pairing=pairing)
        extra = list(source.feedback.parameters())
    opt = torch.optim.Adam([*model.parameters(), *extra], lr=LR[name])
    gen = torch.Generator().manual_seed(seed)
    curve, wall = [], 0.0
    for step in range(1, steps + 1):
        start = time.perf_counter()
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        source.compute(model, cross_entropy, (x[idx], y[idx]))
        opt.step()
        wall += time.perf_counter() - start
        if step % every == 0 or step == steps:
            with torch.no_grad():
                acc = (model(x_test).argmax(1) == y_test).float().mean().item()
            curve.append((step, acc))
    return {"curve": curve, "wall": wall, "cost": source.cost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sources", nargs="+", default=["backprop", "ccl"], choices=list(LR))
    parser.add_argument("--plot", default=None, help="write the accuracy curves to this image")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_mnist1d()
    print(f"MNIST-1D, MLP 40-256-256-10, Adam, {args.steps} steps of {args.batch}")
    print(f"{'source':<17} {'lr':>7} {'test acc':>15} {'wall s':>7} {'fwd':>6} {'bwd':>6}")
    curves = {}
    for name in args.sources:
        runs = [run(name, s, args.steps, args.batch, args.every, data) for s in args.seeds]
        accs = torch.tensor([r["curve"][-1][1] for r in runs])
        spread = f" +- {accs.std().item():.3f}" if len(runs) > 1 else ""
        c = runs[0]["cost"]
        wall = sum(r["wall"] for r in runs) / len(runs)
        print(
            f"{name:<17} {LR[name]:>7.0e} {accs.mean().item():>6.3f}{spread:<9} "
            f"{wall:>7.1f} {c.forward:>6} {c.backward:>6}"
        )
        steps = [s for s, _ in runs[0]["curve"]]
        mean = torch.tensor([[a for _, a in r["curve"]] for r in runs]).mean(0)
        curves[name] = (steps, mean.tolist())
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = {
            "backprop": "backprop",
            "ccl": "counter-current (class pairing)",
            "ccl_example": "counter-current (example pairing)",
            "forward_activity": "forward gradient, activity perturbation",
        }
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, (steps, accs) in curves.items():
            ax.plot(steps, accs, label=labels[name])
        ax.set_xlabel("step (batch 100)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"MNIST-1D, MLP 40-256-256-10, Adam, mean of {len(args.seeds)} seed(s)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
