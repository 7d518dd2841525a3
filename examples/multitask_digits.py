"""Multi-task learning with gradkit.multigrad: one trunk, two heads, on scikit-learn's digits.

Task 1: which digit (10 classes). Task 2: its parity (2 classes). The 1797 8x8 images ship with
scikit-learn (nothing is downloaded). A shared MLP trunk feeds both heads; each method trains
the same network from the same initialisation with Adam, and only the way the two task
gradients are combined on the trunk differs:

- sum:     the plain baseline, ``(loss_digit + loss_parity).backward()``
- PCGrad, MGDA, UPGrad, GradNorm, Bloop (task 1 as the training loss, task 2 auxiliary)

Run: ``python examples/multitask_digits.py`` (about 20 s on one CPU core).
The training loop differs from a single-task loop in one line (``multigrad.backward``).
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from gradkit import multigrad


def data(seed: int) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    return xtr, xte, ytr, yte


def make_model(seed: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
    return trunk, nn.Linear(32, 10), nn.Linear(32, 2)


def make_aggregator(name: str, trunk: nn.Module, seed: int) -> multigrad.Aggregator | None:
    if name == "sum":
        return None
    if name == "pcgrad":
        return multigrad.PCGrad(seed=seed)
    if name == "mgda":
        return multigrad.MGDA()
    if name == "upgrad":
        return multigrad.UPGrad()
    if name == "gradnorm":
        return multigrad.GradNorm(trunk[2].parameters(), alpha=1.5, weight_lr=0.025)
    if name == "bloop":
        return multigrad.Bloop(beta=0.99, lam=1.0, train_index=0)
    raise ValueError(name)


def train(name: str, seed: int, epochs: int, batch: int = 64) -> tuple[float, float]:
    xtr, xte, ytr, yte = data(seed)
    trunk, head_digit, head_parity = make_model(seed)
    heads = [*head_digit.parameters(), *head_parity.parameters()]
    aggregator = make_aggregator(name, trunk, seed)
    shared = list(trunk.parameters())
    if name == "gradnorm":  # GradNorm weights every loss, the heads' included
        shared, heads = shared + heads, []
    opt = torch.optim.Adam(
        [*trunk.parameters(), *head_digit.parameters(), *head_parity.parameters()], lr=2e-3
    )
    gen = torch.Generator().manual_seed(seed)
    ce = nn.functional.cross_entropy
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for start in range(0, len(xtr), batch):
            idx = perm[start : start + batch]
            x, y = xtr[idx], ytr[idx]
            opt.zero_grad()
            h = trunk(x)
            losses = [ce(head_digit(h), y), ce(head_parity(h), y % 2)]
            if aggregator is None:
                sum(losses).backward()
            else:
                multigrad.backward(losses, aggregator, shared, heads)
            opt.step()
    with torch.no_grad():
        h = trunk(xte)
        acc_digit = (head_digit(h).argmax(1) == yte).float().mean().item()
        acc_parity = (head_parity(h).argmax(1) == yte % 2).float().mean().item()
    return acc_digit, acc_parity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--methods", default="sum,pcgrad,mgda,upgrad,gradnorm,bloop", help="comma-separated"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"digits (1078 train / 719 test), {args.epochs} epochs, {args.seeds} seeds, mean ± std")
    print("| method | digit test acc. | parity test acc. | time (s) |")
    print("|---|---|---|---|")
    for name in args.methods.split(","):
        t0 = time.perf_counter()
        accs = torch.tensor([train(name, s, args.epochs) for s in range(args.seeds)])
        secs = time.perf_counter() - t0
        m, s = accs.mean(0), accs.std(0) if args.seeds > 1 else torch.zeros(2)
        print(
            f"| {name} | {100 * m[0]:.1f} ± {100 * s[0]:.1f} % | "
            f"{100 * m[1]:.1f} ± {100 * s[1]:.1f} % | {secs:.1f} |"
        )


if __name__ == "__main__":
    main()
