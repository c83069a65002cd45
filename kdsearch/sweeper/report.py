"""What a sweep learned, as a table (CSV + Markdown) and plots (PNG).

Reads the trial logs Ray Tune writes as plain JSON (``trial_*/params.json`` and
``result.json``, one line per epoch) and the sweep's ``sweep.json`` manifest.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pandas as pd

from kdsearch.errors import UserError
from kdsearch.search.folder import SweepFolder
from kdsearch.search.record import Objective, TrialRecord, ranked, score_so_far, sign
from kdsearch.search.study import distributions

TABLE_CSV, TABLE_MD = "trials.csv", "trials.md"


def _status(t: TrialRecord, epochs: int) -> str:
    if t.status == "ERROR":
        return "error"
    if t.diverged:
        return "diverged"
    if t.invalid:
        return "invalid"
    last = t.history[-1] if t.history else {}
    return "running" if not last.get("done", True) and len(t.history) < epochs else "ok"


def trial_table(trials: list[TrialRecord], manifest: dict) -> pd.DataFrame:
    objective = Objective(*manifest["objectives"][0])
    epochs = manifest["epochs"]
    rows = []
    for t in ranked(trials, objective):  # best first, ties to the earlier trial: the order best/ was chosen in
        last = t.history[-1] if t.history else {}
        rows.append(
            {
                "trial": t.trial_id,
                **t.params,
                f"best {objective.metric}": t.score(objective) if t.usable(objective) else math.nan,
                "epochs run": len(t.history),
                "stopped early": (t.failure is None and 0 < len(t.history) < epochs),
                "status": _status(t, epochs),
                "student/params": last.get("student/params"),
                "student/flops": last.get("student/flops"),
                "latency/cpu_ms": last.get("latency/cpu_ms"),
            }
        )
    table = pd.DataFrame(rows)
    empty = [c for c in ("student/params", "student/flops", "latency/cpu_ms") if c in table and table[c].isna().all()]
    return table.drop(columns=empty)  # a column is filled or not shown


def methods_table(table: pd.DataFrame, manifest: dict) -> pd.DataFrame | None:
    """The best trial of each method, best first (a sweep that compares methods), else None."""
    if "method" not in table or table["method"].nunique() < 2:
        return None
    best_col = f"best {manifest['objectives'][0][0]}"
    rows = []
    for method, group in table.groupby("method", sort=False):  # the table is ranked: a group's first is its best
        finished = group.dropna(subset=[best_col])
        best = finished.iloc[0] if len(finished) else group.iloc[0]
        settings = {k: best[k] for k in table.columns if k.startswith(f"{method}.") and pd.notna(best[k])}
        rows.append(
            {
                "method": method,
                best_col: best[best_col],
                "trial": best["trial"],
                "trials": len(group),
                "epochs run": int(group["epochs run"].sum()),
                "its settings": ", ".join(
                    f"{k.split('.', 1)[1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
                    for k, v in settings.items()
                ),
            }
        )
    return pd.DataFrame(rows)


def _pareto(points: list[tuple[float, float]], mode: str = "max") -> list[tuple[float, float]]:
    """Points no other point beats on both size (lower) and the objective (higher for max, lower for min)."""
    up = sign(mode)
    front, best = [], -math.inf
    for size, value in sorted(points, key=lambda p: (p[0], -up * p[1])):
        if up * value > best:
            front.append((size, value))
            best = up * value
    return front


def pareto_trials(table, objectives) -> list[str] | None:
    """Trials no other trial beats on every objective (None for a single objective)."""
    if len(objectives) < 2:
        return None
    columns = [f"best {objectives[0][0]}", *(m for m, _ in objectives[1:])]
    if any(c not in table for c in columns):
        return None
    rows = table.dropna(subset=columns)
    signs = [Objective(*o).sign for o in objectives]
    points = {row["trial"]: [s * float(row[c]) for s, c in zip(signs, columns)] for _, row in rows.iterrows()}

    def dominated(p):
        return any(all(a >= b for a, b in zip(q, p)) and q != p for q in points.values())

    return [t for t, p in points.items() if not dominated(p)]


def best_over_time(trials: list[TrialRecord], objective: Objective) -> tuple[list[int], list[float]]:
    """The best score of all trials after each epoch consumed, over the trials that did not fail
    (a diverged or invalid trial reports a sentinel score, not a result)."""
    metric = objective.metric
    events = sorted((h.get("timestamp", 0), h.get(metric)) for t in trials if t.failure is None for h in t.history)
    best, xs, ys = None, [], []
    for consumed, (_, value) in enumerate(events, start=1):
        best = score_so_far(best, {metric: value}, objective)
        xs.append(consumed)
        ys.append(best if best is not None else float("nan"))
    return xs, ys


IMPORTANCE_TRIALS = 500  # fANOVA's cost grows faster than the trial count: 2,000 trials took 80 s here, 500 about 2 s


def _importances(trials: list[TrialRecord], manifest: dict) -> tuple[dict[str, float], int, int]:
    """fANOVA importances, on a seeded sample of at most IMPORTANCE_TRIALS usable trials; with
    how many trials it used, of how many."""

    objective = Objective(*manifest["objectives"][0])
    # fANOVA needs every trial to have each parameter: those some trials draw (a method's settings) are left out
    dists = distributions({key: dist for key, dist in manifest["space"].items() if "when" not in dist})
    usable = [(t, t.score(objective)) for t in trials if t.usable(objective) and all(k in t.params for k in dists)]
    if len(usable) < 2:
        return {}, 0, len(usable)  # nothing to compare: without importing fANOVA (~1.5 s of scikit-learn here)

    import optuna  # fANOVA only when a report is built

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=objective.direction)
    chosen = random.Random(0).sample(usable, IMPORTANCE_TRIALS) if len(usable) > IMPORTANCE_TRIALS else usable
    study.add_trials(
        [optuna.trial.create_trial(params={k: t.params[k] for k in dists}, distributions=dists, value=v) for t, v in chosen]
    )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator), len(chosen), len(usable)


def _parameter_plots(plt, table: pd.DataFrame, manifest: dict):
    """(parameter, the trials' scores against it) for each numeric parameter searched."""
    best_col = f"best {manifest['objectives'][0][0]}"
    for key, dist in manifest["space"].items():
        if dist["kind"] == "choice" or key not in table:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.scatter(table[key], table[best_col], c="tab:blue", alpha=0.8)
        if dist["kind"] == "loguniform":
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=best_col, title=f"{best_col} against {key}")
        ax.grid(alpha=0.3)
        yield key, fig


def _methods_plot(plt, table: pd.DataFrame, manifest: dict):
    """Each method's trials and its best, side by side (a sweep that compares methods), else None."""
    by_method = methods_table(table, manifest)
    if by_method is None:
        return None
    best_col = f"best {manifest['objectives'][0][0]}"
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, method in enumerate(by_method["method"]):
        scores = table.loc[table["method"] == method, best_col].dropna()
        ax.scatter([i] * len(scores), scores, color="tab:blue", alpha=0.4, label="trials" if i == 0 else None)
    ax.scatter(range(len(by_method)), by_method[best_col], color="tab:red", marker="D", label="best of the method")
    ax.set_xticks(range(len(by_method)), by_method["method"])
    ax.set_ylabel(best_col)
    ax.set_title("methods compared, same sweep")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _schedules_plot(plt, trials: list[TrialRecord], objective: Objective):
    """The best trials' learning curves beside their scheduled settings, when they have any."""
    metric = objective.metric
    top = [t for t in ranked(trials, objective)[:3] if any(k.startswith("schedule/") for h in t.history for k in h)]
    if not top:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for t in top:
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(t.history)]
        left.plot(epochs, [h.get(metric) for h in t.history], label=f"trial {t.trial_id}")
        for key in sorted({k for h in t.history for k in h if k.startswith("schedule/")}):
            right.plot(epochs, [h.get(key) for h in t.history], label=f"{t.trial_id}: {key.removeprefix('schedule/')}")
    left.set(xlabel="epoch", ylabel=metric, title="learning curves of the best trials")
    right.set(xlabel="epoch", ylabel="value", title="their scheduled settings")
    right.set_yscale("symlog", linthresh=1.0)
    for ax in (left, right):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def _importances_plot(plt, trials: list[TrialRecord], manifest: dict):
    """(Optuna's fANOVA importances as a bar chart, or None and why not)."""
    best_col = f"best {manifest['objectives'][0][0]}"
    try:
        importances, used, usable = _importances(trials, manifest)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return None, f"parameter importances skipped: {exc}"
    if not importances:
        return None, "parameter importances skipped: needs at least two finished trials"
    fig, ax = plt.subplots(figsize=(5.5, 0.5 + 0.45 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"what moves {best_col}" + (f" ({used} of {usable} trials, sampled)" if used < usable else ""))
    return fig, None


def make_plots(trials: list[TrialRecord], table: pd.DataFrame, manifest: dict, out: Path) -> tuple[list[Path], list[str]]:
    import matplotlib  # plots only when a report is built

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (after choosing the Agg backend)

    objective = Objective(*manifest["objectives"][0])
    metric, best_col = objective.metric, f"best {objective.metric}"
    written, notes = [], []

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    for name, fig in (
        ("methods.png", _methods_plot(plt, table, manifest)),
        ("schedules.png", _schedules_plot(plt, trials, objective)),
    ):
        if fig is not None:
            save(fig, name)

    for key, fig in _parameter_plots(plt, table, manifest):
        save(fig, f"acc_vs_{key.replace('/', '_').replace('.', '_')}.png")

    xs, ys = best_over_time(trials, objective)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.step(xs, ys, where="post")
    ax.set_xlabel("epochs consumed (all trials)")
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title("search progress")
    ax.grid(alpha=0.3)
    save(fig, "best_so_far.png")

    # accuracy against size only where the students differ in size: one size is one column of dots
    sizes_vary = "student/params" in table and table["student/params"].nunique() > 1
    size_col = "latency/cpu_ms" if "latency/cpu_ms" in table else "student/params"
    points = [(s, a) for s, a in zip(table[size_col], table[best_col]) if pd.notna(s) and pd.notna(a)] if sizes_vary else []
    if points:
        front = _pareto(points, objective.mode)
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.scatter([p[0] for p in points], [p[1] for p in points], alpha=0.7, label="trials")
        ax.plot([p[0] for p in front], [p[1] for p in front], "r.-", label="Pareto front")
        ax.set_xlabel(size_col)
        ax.set_ylabel(best_col)
        ax.set_title(f"{best_col} against student {size_col.split('/')[-1]}")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "pareto.png")

    fig, note = _importances_plot(plt, trials, manifest)
    if fig is not None:
        save(fig, "importances.png")
    elif note:
        notes.append(note)
    return written, notes


def build_report(sweep_dir: Path, out: Path | None = None) -> dict:
    """Write the table and plots for a sweep; returns what was written."""
    folder = SweepFolder(Path(sweep_dir))
    manifest = folder.read_manifest()
    trials = folder.trials()
    out = out or folder.report_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out} ({exc.strerror}): pass a writable --out") from None
    table = trial_table(trials, manifest)
    table.to_csv(out / TABLE_CSV, index=False)
    (out / TABLE_MD).write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
    files = [out / TABLE_CSV, out / TABLE_MD]
    by_method = methods_table(table, manifest)
    if by_method is not None:
        by_method.to_csv(out / "methods.csv", index=False)
        (out / "methods.md").write_text(by_method.to_markdown(index=False, floatfmt=".4g") + "\n")
        files += [out / "methods.csv", out / "methods.md"]
    plots, notes = make_plots(trials, table, manifest, out)
    return {"out": out, "table": table, "methods": by_method, "files": [*files, *plots], "notes": notes, "manifest": manifest}
