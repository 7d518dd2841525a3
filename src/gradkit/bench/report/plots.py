"""The report's figures (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gradkit.bench.execution.trajectories import Trajectory  # noqa: E402
from gradkit.bench.protocol.stats import STATISTIC, mean_ci  # noqa: E402
from gradkit.bench.report.results import OptimizerResult, TrialResult  # noqa: E402
from gradkit.bench.tasks.testfunctions import TEST_FUNCTIONS  # noqa: E402

__all__ = [
    "diagnostic_records",
    "plot_curves",
    "plot_lr_sensitivity",
    "plot_sharpness",
    "plot_subspace",
    "plot_time_to_target",
    "plot_trajectories",
]

_COLORS = plt.get_cmap("tab10").colors


def _color(i: int):
    return _COLORS[i % len(_COLORS)]


def _stack(runs, attr: str) -> tuple[np.ndarray, np.ndarray]:
    """Common x (steps) and a (seeds, points) array, truncated to the shortest run."""
    n = min(len(getattr(r, attr)) for r in runs)
    steps = np.asarray(runs[0].steps[:n], dtype=float)
    return steps, np.asarray([getattr(r, attr)[:n] for r in runs], dtype=float)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _marker(i: int) -> str:
    return _MARKERS[i % len(_MARKERS)]


def _save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` and free it (tests replace this to inspect the figure)."""
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ci_columns(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% Student-t half width of each column of a (seeds, points) array: the
    statistic of every table and figure of the report (:data:`STATISTIC`)."""
    pairs = [mean_ci(ys[:, j]) for j in range(ys.shape[1])]
    mean = np.array([p[0] for p in pairs], dtype=float)
    half = np.array([p[1] for p in pairs], dtype=float)
    return mean, np.nan_to_num(half, nan=0.0)


def _band(ax, x, ys, color, label, marker: str | None = None) -> None:
    """Mean over seeds (line) and its 95% Student-t interval (band)."""
    mean, half = _ci_columns(ys)
    ax.plot(x, mean, color=color, label=label, lw=1.8, marker=marker, ms=4, markevery=0.1)
    if len(ys) > 1:
        ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.2, lw=0)


def plot_curves(results: list[OptimizerResult], path: Path) -> Path:
    """Train loss and validation metric of each optimizer's best configuration against steps
    and training wall time; line = mean over seeds, band = its 95% Student-t interval."""
    task = results[0].task
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for i, res in enumerate(results):
        best = res.best
        if best is None or not all(r.steps for r in best.runs):
            continue
        label = f"{res.optimizer} (lr={best.lr:.2g})"
        x, loss = _stack(best.runs, "train_loss")
        _band(axes[0], x, loss, _color(i), label, _marker(i))
        x, val = _stack(best.runs, "val")
        _band(axes[1], x, val, _color(i), label, _marker(i))
        _, wall = _stack(best.runs, "wall")
        _band(axes[2], wall.mean(0), val, _color(i), label, _marker(i))
    axes[0].set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
    axes[1].set(xlabel="step", ylabel=task.metric, title=f"validation {task.metric}")
    axes[2].set(xlabel="training wall time (s)", ylabel=task.metric, title="against wall time")
    for ax in axes[1:]:
        for name, value in task.references.items():
            ax.axhline(value, color="0.4", ls=":", lw=1)
            ax.annotate(
                name,
                (0.01, value),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color="0.3",
                va="bottom",
            )
        ax.axhline(task.target, color="k", ls="--", lw=0.8, label=f"target {task.target:g}")
        _zoom_metric(ax, results, task)
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    handles.append(matplotlib.patches.Patch(color="0.6", alpha=0.4))
    labels.append(f"band: {STATISTIC}")
    axes[1].legend(handles, labels, fontsize=8, loc="best")
    fig.suptitle(f"{task.name}: best configuration per optimizer (line and band: {STATISTIC})")
    fig.tight_layout()
    return _save(fig, path)


def _zoom_metric(ax, results, task) -> None:
    """Y range: every final value, the target and the references, plus a margin."""
    values = [task.target, *task.references.values()]
    for r in results:
        if r.best is not None:
            values += [v for run in r.best.runs for v in run.val[-1:]]
            values += [
                max(run.val) if task.higher_is_better else min(run.val)
                for run in r.best.runs
                if run.val
            ]
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) + 1e-3
    ax.set_ylim(lo - pad, hi + pad)


def plot_lr_sensitivity(results: list[OptimizerResult], path: Path) -> Path:
    """Final validation metric against the learning rate: mean over seeds, bars its 95%
    Student-t interval."""
    task = results[0].task
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, res in enumerate(results):
        if not res.trials:
            continue
        lrs = np.array([t.lr for t in res.trials])
        finals = [np.array([r.final_val for r in t.runs], dtype=float) for t in res.trials]
        stats = [mean_ci(f) for f in finals]
        mean = np.array([m for m, _ in stats], dtype=float)
        err = np.nan_to_num(np.array([h for _, h in stats], dtype=float), nan=0.0)
        best_lr = lrs[np.argmax(mean if task.higher_is_better else -mean)]
        for ax, x in ((axes[0], lrs), (axes[1], lrs / best_lr)):
            ax.errorbar(
                x,
                mean,
                yerr=err,
                marker=_marker(i),
                capsize=3,
                color=_color(i),
                label=res.optimizer,
            )
    axes[0].set(
        xscale="log",
        xlabel="learning rate",
        ylabel=f"final {task.metric}",
        title=f"learning-rate sensitivity ({STATISTIC})",
    )
    axes[1].set(
        xscale="log",
        xlabel="learning rate / best learning rate",
        ylabel=f"final {task.metric}",
        title="relative to each optimizer's best lr",
    )
    for ax in axes:
        ax.axhline(task.target, color="k", ls="--", lw=0.8)
        ax.grid(alpha=0.3, which="both")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, title=f"bars: {STATISTIC}", title_fontsize=7)
    fig.suptitle(task.name)
    fig.tight_layout()
    return _save(fig, path)


def plot_time_to_target(results: list[OptimizerResult], path: Path) -> Path:
    """Steps and training seconds to reach the target (best configuration, mean over the seeds
    that reached it); bars are hatched and labelled when no seed reached it."""
    task = results[0].task
    summaries = [r.summary() for r in results]
    names = [s["optimizer"] for s in summaries]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, unit in ((axes[0], "steps_to_target", "steps"), (axes[1], "time_to_target", "s")):
        for i, s in enumerate(summaries):
            v = s.get(key, math.nan)
            reached = s.get("reached", 0)
            if reached and math.isfinite(v):
                ax.bar(i, v, color=_color(i))
                ax.annotate(
                    f"{v:.3g}{'' if unit == 'steps' else ' s'}\n{reached}/{s['seeds']} seeds",
                    (i, v),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            else:
                ax.bar(i, 0, color=_color(i))
                ax.annotate(
                    "not reached", (i, 0), ha="center", va="bottom", fontsize=8, rotation=90
                )
        ax.set_xticks(range(len(names)), names)
        ax.set_xlabel("optimizer (best configuration; mean over the seeds that reached it)")
        ax.set_ylabel(f"{unit} to target")
        ax.margins(y=0.2)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{task.name}: steps and seconds to reach {task.metric} {task.target:g}")
    fig.tight_layout()
    return _save(fig, path)


def plot_trajectories(trajs: dict[str, list[Trajectory]], path: Path) -> Path:
    """One panel per test function: contours and each optimizer's path (best lr)."""
    names = list(trajs)
    fig, axes = plt.subplots(1, len(names), figsize=(5.4 * len(names), 5), squeeze=False)
    optimizers: list[str] = []
    for paths in trajs.values():
        for t in paths:
            if t.optimizer not in optimizers:
                optimizers.append(t.optimizer)
    for ax, name in zip(axes[0], names):
        fn = TEST_FUNCTIONS[name]
        xs = np.linspace(*fn.xlim, 300)
        ys = np.linspace(*fn.ylim, 300)
        X, Y = np.meshgrid(xs, ys)
        with torch.no_grad():
            Z = fn.fn(torch.from_numpy(np.stack([X, Y], -1))).numpy()
        if fn.log_contours:
            filled = ax.contourf(X, Y, np.log10(Z + 1e-3), levels=30, cmap="Greys", alpha=0.55)
            ax.contour(X, Y, np.log10(Z + 1e-3), levels=15, colors="0.5", linewidths=0.4)
            bar_label = "log10(f(x, y) + 0.001)"
        else:
            filled = ax.contourf(X, Y, Z, levels=30, cmap="Greys", alpha=0.55)
            bar_label = "f(x, y)"
        fig.colorbar(filled, ax=ax, label=bar_label, shrink=0.85)
        for t in trajs[name]:
            p = np.asarray(t.path)
            k = optimizers.index(t.optimizer)
            # optimizers with the same lr can follow the same path: each has its own marker
            # (every few points, offset per optimizer) and dash pattern, drawn on top of the
            # others in a thinner line, so that hidden paths still show
            n = len(p)
            every = max(1, n // 12)
            ax.plot(
                p[:, 0],
                p[:, 1],
                color=_color(k),
                lw=2.2 - 0.3 * (k % 4),
                ls=("-", "--", "-.", ":")[k % 4],
                marker=_marker(k),
                ms=5,
                markevery=(min(n - 1, (k * every) // max(1, len(optimizers))), every),
                markerfacecolor="none",
                label=f"{t.optimizer} lr={t.lr:.2g} f={t.final_value:.2g}",
                zorder=3 + k,
            )
        ax.plot(*fn.start, "ko", ms=5, label="start", zorder=20)
        ax.plot(*fn.minimum, "r*", ms=12, label="minimum", zorder=20)
        ax.set(xlim=fn.xlim, ylim=fn.ylim, title=fn.description, xlabel="x", ylabel="y")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("test-function trajectories (each at its best learning rate on a log grid)")
    fig.tight_layout()
    return _save(fig, path)


def diagnostic_records(trial: TrialResult | None, name: str) -> list[dict]:
    """The records of diagnostic ``name`` in ``trial`` (the run of the lowest seed having them)."""
    if trial is None:
        return []
    for run in sorted(trial.runs, key=lambda r: r.seed):
        recs = run.diagnostics.get(name)
        if recs:
            return list(recs)
    return []


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([r["step"] for r in records], dtype=float)
    vals = np.array([np.nan if r.get(key) is None else r[key] for r in records], dtype=float)
    return steps, vals


def _with_records(
    results: list[OptimizerResult], name: str
) -> list[tuple[int, OptimizerResult, list[dict]]]:
    """``(i, result, records)`` of the optimizers whose best configuration recorded diagnostic
    ``name``; ``i`` is the optimizer's place in ``results`` (its colour)."""
    found = [(i, res, diagnostic_records(res.best, name)) for i, res in enumerate(results)]
    return [(i, res, recs) for i, res, recs in found if recs]


def plot_sharpness(results: list[OptimizerResult], path: Path) -> Path | None:
    """Sharpness (top Hessian eigenvalue on the fixed batch) against step, one line per
    optimizer (best configuration, seed 0), with its stability edge 2/lr dashed in the same
    colour. Log scale; non-positive eigenvalues are not drawn. None if nothing was recorded."""
    task = results[0].task
    found = _with_records(results, "sharpness")
    if not found:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    sharp_all: list[float] = []
    lowest_edges: list[float] = []
    n = len(found)
    for j, (i, res, recs) in enumerate(found):
        x, sharp = _series(recs, "sharpness")
        _, th = _series(recs, "threshold")
        sharp = np.where(sharp > 0, sharp, np.nan)
        label = f"{res.optimizer} (lr={res.best.lr:.2g})"
        ax.plot(x, sharp, color=_color(i), lw=1.8, marker="o", ms=3, label=label)
        # interleaved dashes: optimizers with the same lr share one 2/lr curve; each colour
        # stays visible along it
        dash = (4 * j, (4, 4 * max(1, n - 1)))
        ax.plot(x, th, color=_color(i), lw=1.3, ls=dash)
        sharp_all += [v for v in sharp if np.isfinite(v)]
        if np.isfinite(th).any():
            lowest_edges.append(float(np.nanmin(th)))
    ax.plot([], [], color="0.3", lw=1.3, ls="--", label="2/lr (dashed, same colour)")
    ax.set_yscale("log")
    if sharp_all:
        # 2/lr grows without bound during warmup and the cosine tail: stop the axis a little
        # above every optimizer's lowest edge (and the highest sharpness)
        top = max(max(sharp_all), *lowest_edges) * 3
        ax.set_ylim(min(sharp_all) / 3, top)
    ax.set(
        xlabel="step",
        ylabel="top Hessian eigenvalue",
        title=f"{task.name}: sharpness on a fixed batch (solid) vs 2/lr (dashed); "
        "best configuration, seed 0",
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_subspace(results: list[OptimizerResult], path: Path) -> Path | None:
    """Fraction of the gradient in the top-k Hessian eigenspace (solid) and the overlap of that
    eigenspace with the first measurement's (dotted), against step; best configuration, seed 0.
    None if nothing was recorded."""
    task = results[0].task
    found = _with_records(results, "subspace")
    if not found:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.4))
    for i, res, recs in found:
        x, frac = _series(recs, "fraction")
        _, overlap = _series(recs, "overlap_with_reference")
        k = max(len(r.get("eigenvalues") or []) for r in recs)
        label = f"{res.optimizer} (lr={res.best.lr:.2g}, top {k})"
        ax.plot(x, frac, color=_color(i), lw=1.8, marker="o", ms=3, label=label)
        ax.plot(x, overlap, color=_color(i), lw=1.0, ls=":")
    ax.set(
        xlabel="step",
        ylabel="fraction",
        ylim=(-0.02, 1.02),
        title=f"{task.name}: gradient in the top Hessian subspace (solid), overlap with the "
        "first subspace (dotted)",
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
