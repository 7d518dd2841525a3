"""The report folder: a Markdown summary table ranking the optimizers, PNG figures and an HTML
page showing both."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from gradkit.bench.execution.storage import mask_secrets
from gradkit.bench.execution.trajectories import Trajectory
from gradkit.bench.protocol.stats import STATISTIC, compare_to_best
from gradkit.bench.report.plots import (
    plot_curves,
    plot_lr_sensitivity,
    plot_sharpness,
    plot_subspace,
    plot_time_to_target,
    plot_trajectories,
)
from gradkit.bench.report.results import OptimizerResult

__all__ = ["rank", "summary_table", "verdict", "write_report"]

#: Significance level of the paired tests against the best optimizer (Holm-corrected).
ALPHA = 0.05


def _fmt(x: float, spec: str = ".4g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def rank(results: list[OptimizerResult]) -> list[dict[str, Any]]:
    """Summaries, best first by the mean final validation metric of the best configuration.

    Only optimizers whose every planned trial is there are ranked (``"rank"`` 1, 2, ...);
    incomplete ones follow, unranked (``"rank"`` None), so that no ranking compares optimizers
    tuned on different numbers of trials.
    """
    summaries = [r.summary() for r in results]
    task = results[0].task
    sign = -1.0 if task.higher_is_better else 1.0

    def key(s: dict[str, Any]) -> tuple[bool, float]:
        v = s.get("final_mean", math.nan)
        return (not s["complete"], math.inf if v is None or math.isnan(v) else sign * v)

    ordered = sorted(summaries, key=key)
    for i, s in enumerate(ordered, 1):
        s["rank"] = i if s["complete"] else None
    # paired tests on the same seeds, among the ranked optimizers only
    ranked = {r.optimizer: r.per_seed() for r in results if r.complete and r.best is not None}
    tests = compare_to_best(ranked, task.higher_is_better, ALPHA)
    for s in ordered:
        c = tests.get(s["optimizer"])
        if c is not None:
            s["vs_best"] = {
                "diff": c.diff,
                "diff_ci": c.diff_ci,
                "p": c.p,
                "p_holm": c.p_holm,
                "paired_seeds": c.seeds,
                "verdict": c.verdict,
                "test": f"paired t-test on the same seeds vs the best, Holm-corrected over "
                f"{max(0, len(tests) - 1)} comparison(s), alpha {ALPHA}",
            }
    return ordered


_GROUP = {
    "best": "tied for first (best mean)",
    "tied": "tied for first",
    "worse": "significantly worse",
    "untested": "not tested (one seed)",
}


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def verdict(results: list[OptimizerResult]) -> str:
    """Two sentences for the top of the report, generated from the paired tests: who has the
    best mean, who is tied with it, who is significantly worse (or that nothing is)."""
    task = results[0].task
    ranked = [s for s in rank(results) if s["rank"] is not None and "vs_best" in s]
    if not ranked:
        return (
            f"On {task.name} no optimizer has all its planned trials yet, so none is ranked. "
            "Run the same command again without --report-only to finish them."
        )
    best = ranked[0]
    tied = [s["optimizer"] for s in ranked[1:] if s["vs_best"]["verdict"] == "tied"]
    worse = [s for s in ranked[1:] if s["vs_best"]["verdict"] == "worse"]
    untested = [s["optimizer"] for s in ranked[1:] if s["vs_best"]["verdict"] == "untested"]
    first = (
        f"On {task.name}, {best['optimizer']} has the best mean final {task.metric} "
        f"({_fmt(best['final_mean'])} ± {_fmt(best['final_ci'], '.2g')}, 95% Student-t CI over "
        f"{best.get('seeds', 0)} seeds)"
    )
    if tied:
        first += (
            f", but {_names(tied)} cannot be told apart from it (paired t-test on the same seeds, "
            f"Holm-corrected, alpha {ALPHA}): {'they are' if len(tied) > 1 else 'both are'} "
            "tied for first."
        )
    else:
        first += "."
    if worse:
        worst_p = max(s["vs_best"]["p_holm"] for s in worse)
        second = (
            f"{_names([s['optimizer'] for s in worse])} "
            f"{'are' if len(worse) > 1 else 'is'} significantly worse (Holm-corrected "
            f"p ≤ {worst_p:.2g})."
        )
    elif untested:
        second = (
            f"With one seed nothing can be tested: rerun with --seeds 3 or more to tell "
            f"{_names([best['optimizer'], *untested])} apart."
        )
    elif len(ranked) > 1:
        second = (
            f"No optimizer is significantly worse than {best['optimizer']} with "
            f"{best.get('seeds', 0)} seeds; more seeds (--seeds) are needed to separate them."
        )
    else:
        second = "It is the only optimizer ranked."
    return first + " " + second


def suggested_range(result: OptimizerResult) -> tuple[float, float] | None:
    """For an under-tuned optimizer (best lr on the edge of the searched range), an
    ``--lr-range`` of the same width centred on that edge; None otherwise."""
    edge = result.edge()
    if edge not in ("low", "high"):
        return None
    low, high = result.lr_factors
    half = math.sqrt(high / low)
    centre = high if edge == "high" else low
    return centre / half, centre * half


def notes(results: list[OptimizerResult]) -> list[str]:
    """Warnings shown above a task's table: incomplete studies (not ranked) and under-tuned
    optimizers (best lr on the edge of the searched range, with the range to search)."""
    out: list[str] = []
    for r in results:
        if not r.complete:
            missing = ", ".join(f"{lr:.3g}" for lr in r.missing_lrs)
            out.append(
                f"INCOMPLETE, not ranked: {r.optimizer} has {len(r.trials)} of {r.planned} "
                "planned trials"
                + (f" (no usable trial yet at lr {missing})" if missing else "")
                + "; run the same command again without --report-only to finish them."
            )
    for r in results:
        edge = r.edge()
        if edge == "single":
            out.append(
                f"UNDER-TUNED: {r.optimizer} was run at one learning rate only; "
                "use --trials 3 or more to search a range."
            )
        elif edge in ("low", "high"):
            lo, hi = suggested_range(r)
            lr = r.best.lr
            word = "lowest" if edge == "low" else "highest"
            out.append(
                f"UNDER-TUNED: {r.optimizer}'s best lr {lr:.3g} is the {word} one searched "
                f"(lr {r.lr_range[0]:.3g} to {r.lr_range[1]:.3g}, i.e. --lr-range "
                f"{r.lr_factors[0]:g} {r.lr_factors[1]:g} x its search centre); its optimum may lie "
                f"{'below' if edge == 'low' else 'above'}: search --lr-range {lo:.3g} {hi:.3g}."
            )
    for r in results:
        failed = r.failed_lrs()
        if r.trials and len(failed) > len(r.trials) / 2:
            lrs = ", ".join(f"{lr:.3g}" for lr in failed)
            good = [t.lr for t in r.trials if t.lr not in failed]
            hint = (
                f"; search around the working ones ({', '.join(f'{lr:.3g}' for lr in good)})"
                if good
                else ""
            )
            out.append(
                f"POOR GRID: {len(failed)} of {len(r.trials)} learning rates of {r.optimizer} "
                f"diverged or stayed at chance (lr {lrs}): most of its budget was wasted, so its "
                f"rank understates it{hint} with --lr-range."
            )
    return out


def summary_table(results: list[OptimizerResult]) -> list[list[str]]:
    """Header and rows of the ranking table for one task."""
    task = results[0].task
    header = [
        "rank",
        "optimizer",
        f"final {task.metric} (mean ± 95% CI)",
        "vs best (paired, 95% CI)",
        "p (Holm)",
        "group",
        f"best {task.metric} (mean ± 95% CI)",
        "best lr",
        "reached target",
        "steps to target",
        "time to target (s)",
        "train time (s)",
        "step time (ms)",
        "raw wall time to target (s)",
        "opt. step share",
        "opt. state (KiB)",
        "peak memory (MiB)",
        "trials x seeds",
    ]
    ranking = rank(results)
    # arms with a gradient source or an aggregator: their cost in passes, and each task's metric
    arms = any(r.source is not None or r.aggregator is not None for r in results)
    tasks = list(dict.fromkeys(k for s in ranking for k in s.get("task_metrics") or {}))
    extra = [f"final {t} (mean ± 95% CI)" for t in tasks]
    if arms:
        extra.append("passes per step (fwd / bwd / jvp)")
    header[3:3] = extra
    rows = [header]
    ties = any(s.get("vs_best", {}).get("verdict") == "tied" for s in ranking)
    for s in ranking:
        place = str(s["rank"]) if s["rank"] is not None else "-"
        trials = f"{s['trials']} x {s.get('seeds', 0)}"
        if not s["complete"]:
            trials = f"{s['trials']} of {s['planned_trials']} (INCOMPLETE) x {s.get('seeds', 0)}"
        if not s.get("trials"):
            rows.append(
                [place, s["optimizer"], "no finished trial"] + ["-"] * (len(header) - 4) + [trials]
            )
            continue
        vs = s.get("vs_best")
        if vs is None:
            vs_cells = ["-", "-", "not ranked"]
        elif vs["verdict"] == "best":
            vs_cells = ["-", "-", _GROUP["best"] if ties else "best"]
        else:
            vs_cells = [
                f"{_fmt(vs['diff'], '.3g')} ± {_fmt(vs['diff_ci'], '.2g')}",
                _fmt(vs["p_holm"], ".2g"),
                _GROUP[vs["verdict"]],
            ]
        extra = [
            f"{_fmt(s['task_metrics'][t][0])} ± {_fmt(s['task_metrics'][t][1], '.2g')}"
            if t in s.get("task_metrics", {})
            else "-"
            for t in tasks
        ]
        if arms:
            pps = s.get("passes_per_step") or {}
            extra.append(
                " / ".join(_fmt(pps[k], ".3g") for k in ("forward", "backward", "jvp"))
                if pps
                else "-"
            )
        lr = _fmt(s["lr"], ".3g")
        if s["edge"] in ("low", "high", "single"):
            lr += " (UNDER-TUNED: edge of range)" if s["edge"] != "single" else " (one lr only)"
        rows.append(
            [
                place,
                s["optimizer"],
                f"{_fmt(s['final_mean'])} ± {_fmt(s['final_ci'], '.2g')}",
                *extra,
                *vs_cells,
                f"{_fmt(s['best_mean'])} ± {_fmt(s['best_ci'], '.2g')}",
                lr,
                f"{s['reached']}/{s['seeds']}",
                _fmt(s["steps_to_target"], ".4g"),
                _fmt(s["time_to_target"], ".3g"),
                _fmt(s["train_time"], ".3g"),
                _fmt(1000 * s["step_time"], ".3g"),
                _fmt(s["raw_time_to_target"], ".3g"),
                f"{100 * s['step_time_share']:.0f}%",
                _fmt(s["optimizer_state_bytes"] / 1024, ".1f"),
                _fmt(s["peak_memory_bytes"] / 2**20, ".0f"),
                trials,
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
font-weight:600}.verdict{font-size:16px;background:#eef6ee;border:1px solid #7a7;padding:.6em}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.5em}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f5f5f5}"""


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
    meta = {k: mask_secrets(v) if isinstance(v, str) else v for k, v in meta.items()}
    md = ["# gradkit compare report", ""]
    body = ["<h1>gradkit compare report</h1>"]
    verdicts = [verdict(results) for results in by_task.values() if results]
    md += [f"**Verdict.** {v}" for v in verdicts] + ([""] if verdicts else [])
    body += [f'<p class="verdict"><strong>Verdict.</strong> {html.escape(v)}</p>' for v in verdicts]
    setup = [(k, str(v)) for k, v in meta.items() if k != "command"]
    md += [f"Command: `{meta.get('command', '')}`", ""]
    md += [f"- {k}: {v}" for k, v in setup] + [""]
    body += [
        f"<p>Command: <code>{html.escape(str(meta.get('command', '')))}</code></p>",
        "<ul>"
        + "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in setup)
        + "</ul>",
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
        warn = notes(results)
        timing = (
            f"Intervals: {STATISTIC}, the same as the bands and bars of the figures. 'vs best': "
            "the paired difference to the best optimizer on the same seeds and its 95% CI; "
            "p (Holm): two-sided paired t-test, Holm-corrected for the number of comparisons; "
            f"'tied for first': not significantly different from the best at alpha {ALPHA}. "
            "Time to target and train time: steps x the per-step time of the calibration pass "
            "(see 'how time was measured' above); raw wall time to target: measured while the "
            "trials ran, so it depends on what else the machine was doing then."
        )
        md += [f"## {name}", "", intro, ""]
        md += [f"> **{w}**" + "\n>" for w in warn] + ([""] if warn else [])
        md += [_markdown(rows), "", timing, ""]
        md += [f"![{f.stem}]({f.name})" for f in figs] + [""]
        body += [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(intro)}</p>"]
        body += [f'<p class="warn"><strong>{html.escape(w)}</strong></p>' for w in warn]
        body += [_html_table(rows), f"<p>{html.escape(timing)}</p>"]
        body += [f'<img src="{f.name}" alt="{f.stem}">' for f in figs]
        for text, fig in _diagnostic_figures(name, results, out_dir):
            md += [text, "", f"![{fig.stem}]({fig.name})", ""]
            body += [f"<p>{html.escape(text)}</p>", f'<img src="{fig.name}" alt="{fig.stem}">']
        dump["tasks"][name] = {
            "notes": warn,
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
    dump["verdict"] = verdicts
    dump["statistic"] = STATISTIC
    # credentials never leave the process, whatever text carried them (a command line, a URL
    # in an error message recorded with a trial)
    (out_dir / "summary.md").write_text(mask_secrets("\n".join(md) + "\n"))
    (out_dir / "results.json").write_text(mask_secrets(json.dumps(_clean(dump), indent=1)))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>gradkit compare</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>"
    )
    index = out_dir / "index.html"
    index.write_text(mask_secrets(page))
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
