"""The report folder: a Markdown summary table ranking the optimizers, PNG figures and an HTML
page showing both."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from gradkit.bench.execution.trajectories import Trajectory
from gradkit.bench.report.plots import (
    plot_curves,
    plot_lr_sensitivity,
    plot_sharpness,
    plot_subspace,
    plot_time_to_target,
    plot_trajectories,
)
from gradkit.bench.report.results import OptimizerResult

__all__ = ["rank", "summary_table", "write_report"]


def _fmt(x: float, spec: str = ".4g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def rank(results: list[OptimizerResult]) -> list[dict[str, Any]]:
    """Summaries sorted best first by mean final validation metric of the best configuration."""
    summaries = [r.summary() for r in results]
    task = results[0].task
    sign = -1.0 if task.higher_is_better else 1.0

    def key(s: dict[str, Any]) -> float:
        v = s.get("final_mean", math.nan)
        return math.inf if v is None or math.isnan(v) else sign * v

    return sorted(summaries, key=key)


def summary_table(results: list[OptimizerResult]) -> list[list[str]]:
    """Header and rows of the ranking table for one task."""
    task = results[0].task
    header = [
        "rank",
        "optimizer",
        f"final {task.metric} (mean ± 95% CI)",
        f"best {task.metric}",
        "best lr",
        "reached target",
        "steps to target",
        "time to target (s)",
        "train time (s)",
        "opt. step share",
        "opt. state (KiB)",
        "peak memory (MiB)",
        "trials x seeds",
    ]
    rows = [header]
    for i, s in enumerate(rank(results), 1):
        if not s.get("trials"):
            rows.append([str(i), s["optimizer"], "no finished trial"] + ["-"] * (len(header) - 3))
            continue
        rows.append(
            [
                str(i),
                s["optimizer"],
                f"{_fmt(s['final_mean'])} ± {_fmt(s['final_ci'], '.2g')}",
                f"{_fmt(s['best_mean'])} ± {_fmt(s['best_ci'], '.2g')}",
                _fmt(s["lr"], ".3g"),
                f"{s['reached']}/{s['seeds']}",
                _fmt(s["steps_to_target"], ".4g"),
                _fmt(s["time_to_target"], ".3g"),
                _fmt(s["train_time"], ".3g"),
                f"{100 * s['step_time_share']:.0f}%",
                _fmt(s["optimizer_state_bytes"] / 1024, ".1f"),
                _fmt(s["peak_memory_bytes"] / 2**20, ".0f"),
                f"{s['trials']} x {s['seeds']}",
            ]
        )
    return rows


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;font-size:14px;margin:1em 0}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:right}th{background:#f3f3f3}td:nth-child(2){text-align:left;
font-weight:600}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f5f5f5}"""


def _diagnostic_figures(
    name: str, results: list[OptimizerResult], out_dir: Path
) -> list[tuple[str, Path]]:
    """The diagnostics figures of one task (none when the runs recorded no diagnostics)."""
    out: list[tuple[str, Path]] = []
    fig = plot_sharpness(results, out_dir / f"{name}_sharpness.png")
    if fig is not None:
        out.append(
            (
                "Sharpness: the top Hessian eigenvalue of the training loss on a fixed batch "
                "during training (best configuration of each optimizer, seed 0), next to the "
                "stability edge 2/lr of gradient descent at the scheduled learning rate "
                "(dashed, same colour). For adaptive or preconditioned optimizers 2/lr is only "
                "a reference: their stability depends on the preconditioned Hessian.",
                fig,
            )
        )
    fig = plot_subspace(results, out_dir / f"{name}_subspace.png")
    if fig is not None:
        out.append(
            (
                "Gradient in the top Hessian subspace (best configuration, seed 0): fraction of "
                "the squared gradient norm in the span of the top Hessian eigenvectors on a "
                "fixed batch, and the overlap of that span with the first measurement's.",
                fig,
            )
        )
    return out


def write_report(
    out_dir: Path,
    by_task: dict[str, list[OptimizerResult]],
    trajectories: dict[str, list[Trajectory]],
    meta: dict[str, Any],
) -> Path:
    """Write ``summary.md``, ``index.html``, ``results.json`` and the PNGs; return the HTML."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["# gradkit compare report", ""]
    body = ["<h1>gradkit compare report</h1>"]
    setup = ", ".join(f"{k}: {v}" for k, v in meta.items() if k != "command")
    md += [f"Command: `{meta.get('command', '')}`", "", setup, ""]
    body += [
        f"<p>Command: <code>{html.escape(str(meta.get('command', '')))}</code></p>",
        f"<p>{html.escape(setup)}</p>",
    ]
    dump: dict[str, Any] = {"meta": meta, "tasks": {}, "trajectories": {}}
    for name, results in by_task.items():
        task = results[0].task
        rows = summary_table(results)
        figs = [
            plot_curves(results, out_dir / f"{name}_curves.png"),
            plot_lr_sensitivity(results, out_dir / f"{name}_lr_sensitivity.png"),
            plot_time_to_target(results, out_dir / f"{name}_time_to_target.png"),
        ]
        refs = ", ".join(f"{k} {v:g}" for k, v in task.references.items())
        intro = (
            f"{task.description}. Metric: validation {task.metric} "
            f"({'higher' if task.higher_is_better else 'lower'} is better), target {task.target:g}"
            + (f"; published references: {refs}" if refs else "")
            + ". Ranked by the mean final metric of each optimizer's best configuration."
        )
        md += [f"## {name}", "", intro, "", _markdown(rows), ""]
        md += [f"![{f.stem}]({f.name})" for f in figs] + [""]
        body += [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(intro)}</p>", _html_table(rows)]
        body += [f'<img src="{f.name}" alt="{f.stem}">' for f in figs]
        for text, fig in _diagnostic_figures(name, results, out_dir):
            md += [text, "", f"![{fig.stem}]({fig.name})", ""]
            body += [f"<p>{html.escape(text)}</p>", f'<img src="{fig.name}" alt="{fig.stem}">']
        dump["tasks"][name] = {
            "ranking": rank(results),
            "trials": [
                {
                    "optimizer": r.optimizer,
                    "study": r.study_name,
                    "trials": [
                        {
                            "number": t.number,
                            "lr": t.lr,
                            "hyperparams": t.hyperparams,
                            "value": t.value,
                            "runs": [run.to_dict() for run in t.runs],
                        }
                        for t in r.trials
                    ],
                }
                for r in results
            ],
        }
    if trajectories:
        fig = plot_trajectories(trajectories, out_dir / "trajectories.png")
        rows = [["function", "optimizer", "lr", "final value"]]
        for fname, trajs in trajectories.items():
            for t in sorted(trajs, key=lambda t: t.final_value):
                rows.append([fname, t.optimizer, f"{t.lr:.3g}", f"{t.final_value:.3g}"])
        md += [
            "## Test-function trajectories",
            "",
            _markdown(rows),
            "",
            f"![trajectories]({fig.name})",
            "",
        ]
        body += [
            "<h2>Test-function trajectories</h2>",
            _html_table(rows),
            f'<img src="{fig.name}">',
        ]
        dump["trajectories"] = {k: [t.to_dict() for t in v] for k, v in trajectories.items()}
    (out_dir / "summary.md").write_text("\n".join(md) + "\n")
    (out_dir / "results.json").write_text(json.dumps(_clean(dump), indent=1))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>gradkit compare</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>"
    )
    index = out_dir / "index.html"
    index.write_text(page)
    return index


def _clean(o: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if o is None or isinstance(o, (str, int, bool)):
        return o
    return str(o)
