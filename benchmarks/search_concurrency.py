"""Many trials at once: does kdsearch's search still learn when 8 or 32 trials run together?

Used by ``search_efficiency.py --concurrency 2 8 32``. Training every trial of every search at
every concurrency for real is out of reach on 2 cores (3 strategies x 3 concurrencies x 10 seeds
x ~120 trials), so the trials are simulated, and everything else is kdsearch's:

- **the objective** is a surrogate fitted on the real trials of the benchmark's grid and random
  sweeps (every trial trains every epoch): for each epoch, a Gaussian process over the searched
  settings (log scale where the space is) gives the expected validation accuracy; a simulated
  trial's accuracies are that plus noise drawn with the covariance, across epochs, of the
  surrogate's leave-one-out errors on the real trials (a trial's luck persists over its epochs,
  as a training seed's does). The fit's quality is in the results (leave-one-out rank
  correlation, error);
- **the search** is kdsearch's own ``StudySearcher`` (TPE with the constant liar, as a sweep
  builds it from the same space) and Ray Tune's ``ASHAScheduler`` as ``runner.scheduler`` makes
  it, driven with the calls Tune's controller makes: ``on_trial_result`` for each epoch while a
  trial runs, ``on_trial_complete`` with the result that ended it (ASHA's stop or the last epoch);
- **concurrency**: N trials run at once; each epoch of a trial takes 0.8-1.2 time units (the
  trial's own speed, seeded), and when a trial ends the next is asked for at once, as Tune does.

Each search reads its curve (best validation accuracy seen against epochs consumed, in the order
the epochs finished) at the grid's epoch budget and at 4x it, and what it would hand over there:
its best trial's settings, whose expected accuracy (the surrogate's, free of luck) is "its pick".
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from stats import difference

from kdsearch.search import study as studies

LIAR_OFF = "tpe+asha, no constant liar"


@dataclass
class Surrogate:
    keys: list[str]
    kinds: dict[str, tuple[str, float, float]]  # name -> (kind, low, high)
    models: list  # one Gaussian process per epoch
    noise_chol: np.ndarray  # Cholesky factor of the epochs' error covariance
    quality: dict

    def _x(self, settings: list[dict]) -> np.ndarray:
        rows = []
        for s in settings:
            row = []
            for k in self.keys:
                kind, lo, hi = self.kinds[k]
                v = float(s[k])
                row.append(
                    (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) if kind == "log" else (v - lo) / (hi - lo)
                )
            rows.append(row)
        return np.array(rows)

    def mean(self, settings: dict) -> np.ndarray:
        """Expected validation accuracy after each epoch."""
        x = self._x([settings])
        return np.array([float(m.predict(x)[0]) for m in self.models])

    def draw(self, settings: dict, rng: np.random.Generator) -> np.ndarray:
        """One simulated trial's accuracies after each epoch: expected plus this trial's luck."""
        return np.clip(self.mean(settings) + self.noise_chol @ rng.standard_normal(len(self.models)), 0.0, 1.0)


def fit(trials: list[tuple[dict, list[float]]], space: dict) -> Surrogate:
    """A surrogate of ``trials`` (settings, accuracy after each epoch; all the same length) over the
    searched ``space`` (``{name: {"kind", "args"}}``, continuous distributions)."""
    from scipy.stats import spearmanr
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    keys = list(space)
    kinds = {}
    for k, dist in space.items():
        if dist["kind"] not in ("uniform", "loguniform"):
            raise ValueError(f"the concurrency surrogate needs continuous settings; {k} is {dist['kind']}")
        lo, hi = (float(a) for a in dist["args"])
        kinds[k] = ("log" if dist["kind"] == "loguniform" else "linear", lo, hi)
    epochs = len(trials[0][1])
    y = np.array([accs for _, accs in trials])
    surrogate = Surrogate(keys, kinds, [], np.eye(epochs), {})
    x = surrogate._x([s for s, _ in trials])
    residuals = np.zeros_like(y)
    for e in range(epochs):
        kernel = ConstantKernel(1.0) * Matern(length_scale=[0.5] * len(keys), nu=2.5) + WhiteKernel(1e-2)
        model = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0)
        model.fit(x, y[:, e])
        surrogate.models.append(model)
        for i in range(len(y)):  # leave one out, with the kernel fitted on all
            keep = np.arange(len(y)) != i
            loo = GaussianProcessRegressor(kernel=model.kernel_, normalize_y=True, optimizer=None).fit(x[keep], y[keep, e])
            residuals[i, e] = y[i, e] - float(loo.predict(x[i : i + 1])[0])
    cov = np.cov(residuals, rowvar=False) + 1e-10 * np.eye(epochs)
    surrogate.noise_chol = np.linalg.cholesky(cov)
    last = epochs - 1
    predicted = y[:, last] - residuals[:, last]
    surrogate.quality = {
        "trials": len(y),
        "epochs": epochs,
        "loo_spearman_last_epoch": float(spearmanr(predicted, y[:, last]).statistic),
        "loo_rmse_last_epoch": float(np.sqrt(np.mean(residuals[:, last] ** 2))),
        "last_epoch_spread": float(np.std(y[:, last])),
    }
    return surrogate


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


@contextlib.contextmanager
def _no_liar():
    """TPE without the constant liar (Optuna 5 turns it on by default; kdsearch asks for it anyway)."""
    original = studies.build_sampler

    def build(sampler, seed, **kwargs):
        made = original(sampler, seed, **kwargs)
        if isinstance(made, optuna.samplers.TPESampler):
            with studies._experimental_quiet():
                return optuna.samplers.TPESampler(
                    seed=seed + kwargs.get("offset", 0), n_startup_trials=kwargs["startup_trials"], constant_liar=False
                )
        return made

    studies.build_sampler = build
    try:
        yield
    finally:
        studies.build_sampler = original


def simulate(raw_space: dict, surrogate: Surrogate, concurrency: int, seed: int, trials: int, liar: bool = True) -> pd.DataFrame:
    """One search of ``trials`` trials, ``concurrency`` at once, as kdsearch's sweep runs it, on the
    surrogate. Returns every epoch result in the order they finished."""
    from ray.tune.schedulers import TrialScheduler

    from kdsearch.ray_trials.runner import make_searcher, scheduler
    from kdsearch.search.space import load_sweep

    raw = {**raw_space, "search": {**raw_space["search"], "seed": seed, "num_samples": trials}}
    spec = load_sweep(raw)
    epochs = int(spec.fixed["epochs"])
    metric = spec.search.metric
    np.random.seed(seed)  # ASHA draws its bracket with numpy's global generator
    rng = np.random.default_rng(seed + 1000)
    with contextlib.nullcontext() if liar else _no_liar():
        searcher = make_searcher(spec, study_name=f"sim-{seed}", max_epochs=epochs)
        sched = scheduler(spec, epochs)
        if hasattr(sched, "set_search_properties"):
            sched.set_search_properties(spec.search.metric, spec.search.mode)
        running: dict[str, dict] = {}
        started, now, results = 0, 0.0, []

        def start(at: float) -> None:
            nonlocal started
            trial_id = f"t{started:05d}"
            started += 1
            params = searcher.suggest(trial_id)
            sched.on_trial_add(None, _Trial(trial_id))
            speed = rng.uniform(0.8, 1.2)
            running[trial_id] = {
                "params": params,
                "accs": surrogate.draw(params, rng),
                "epoch": 0,
                "speed": speed,
                "next": at + speed,
            }

        while started < min(concurrency, trials):
            start(0.0)
        while running:
            trial_id = min(running, key=lambda t: running[t]["next"])
            t = running[trial_id]
            now = t["next"]
            t["epoch"] += 1
            result = {metric: float(t["accs"][t["epoch"] - 1]), "training_iteration": t["epoch"], "config": dict(t["params"])}
            results.append(
                {"time": now, "trial": trial_id, "epoch": t["epoch"], "val_acc": result[metric], "settings": t["params"]}
            )
            decision = sched.on_trial_result(None, _Trial(trial_id), result)
            if decision == TrialScheduler.STOP or t["epoch"] >= epochs:
                sched.on_trial_complete(None, _Trial(trial_id), result)
                searcher.on_trial_complete(trial_id, result)
                del running[trial_id]
                if started < trials:
                    start(now)
            else:
                searcher.on_trial_result(trial_id, result)
                t["next"] = now + t["speed"]
    return pd.DataFrame(results)


def read(results: pd.DataFrame, surrogate: Surrogate, budget: int) -> dict:
    """The search at ``budget`` epochs consumed: its best accuracy seen, and its pick's expected one."""
    seen = results.iloc[:budget]
    best = seen.loc[seen["val_acc"].idxmax()]
    return {"best seen": float(best["val_acc"]), "pick": float(surrogate.mean(best["settings"])[-1])}


def run(
    design: list[tuple[dict, list[float]]],
    spaces: dict[str, dict],
    grid_budget: int,
    concurrencies: list[int],
    seeds: list[int],
    per_grid_trial: dict[str, float],
    grid_size: int,
    multiples: tuple[int, ...] = (1, 4),
) -> tuple[pd.DataFrame, dict]:
    """Every strategy at every concurrency and seed. ``spaces``: strategy -> its sweep's raw space
    (TPE + ASHA, random; the no-liar variant is derived from TPE + ASHA)."""
    surrogate = fit(design, _space_of(spaces))
    strategies = {**spaces}
    tpe = next(k for k, v in spaces.items() if v["search"]["sampler"] == "tpe")
    strategies[LIAR_OFF] = spaces[tpe]
    rows = []
    for name, raw in strategies.items():
        trials = max(2, round(grid_size * per_grid_trial.get(name, per_grid_trial.get(tpe)) * max(multiples)))
        for concurrency in concurrencies:
            for seed in seeds:
                results = simulate(raw, surrogate, concurrency, seed, trials, liar=name != LIAR_OFF)
                row = {"strategy": name, "concurrency": concurrency, "seed": seed, "trials": trials, "epochs": len(results)}
                for m in multiples:
                    for k, v in read(results, surrogate, m * grid_budget).items():
                        row[f"{k} at {m}x"] = v
                rows.append(row)
                print(
                    f"simulated {name} x{concurrency} seed {seed}: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if " at " in k),
                    flush=True,
                )
    return pd.DataFrame(rows), surrogate.quality


def _space_of(spaces: dict[str, dict]) -> dict:
    """The searched space as a sweep parses it (``{name: {"kind", "args"}}``)."""
    from kdsearch.search.space import load_sweep

    return load_sweep(next(iter(spaces.values()))).space


def write(out, table: pd.DataFrame, quality: dict, budget: int, concurrencies: list[int], base: str, command: str) -> None:
    """concurrency.csv (every simulated search), concurrency.json (the surrogate's fit and the
    settings) and concurrency.md (mean +/- std over seeds, goals)."""
    import json
    import os
    import platform
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "concurrency.csv", index=False)
    setting = {"quality": quality, "budget": budget, "concurrencies": concurrencies, "base": base, "command": command}
    (out / "concurrency.json").write_text(json.dumps(setting, indent=1, default=float) + "\n")  # with the csv: the page again
    multiples = sorted(int(c.split(" at ")[1].rstrip("x")) for c in table.columns if c.startswith("pick at "))
    groups = table.groupby(["strategy", "concurrency"], sort=False)
    stats = groups.agg(["mean", "std"]) if len(table) else None

    def cell(strategy: str, concurrency: int, column: str) -> str:
        mean, std = stats.loc[(strategy, concurrency), (column, "mean")], stats.loc[(strategy, concurrency), (column, "std")]
        return f"{100 * mean:.2f} +/- {100 * (0.0 if math.isnan(std) else std):.2f}%"

    seeds = table["seed"].nunique()
    lines = [
        f"# Many trials at once: {base} and random search at {', '.join(map(str, concurrencies))} trials at once (simulated)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Command: `{command}`.",
        "",
        f"Trials simulated on a surrogate of the {quality['trials']} real trials of the grid and random sweeps (every trial "
        f"{quality['epochs']} epochs): a Gaussian process per epoch over the searched settings, plus noise with the "
        "covariance across epochs of its leave-one-out errors. Its leave-one-out fit on the last epoch: rank correlation "
        f"{quality['loo_spearman_last_epoch']:.2f}, error {100 * quality['loo_rmse_last_epoch']:.2f} points (the real trials "
        f"spread {100 * quality['last_epoch_spread']:.2f} points). The search is kdsearch's own (`StudySearcher`, Ray Tune's "
        "`ASHAScheduler` as a sweep makes them), driven as Tune's loop drives them; a trial's epochs take 0.8-1.2 time units, "
        f"and a new trial is asked for as soon as one ends. {seeds} search seeds each; mean +/- std over seeds. Grid budget "
        f'{budget} epochs (every epoch of every trial counted, in the order they finished). "Best seen": the best validation '
        'accuracy the search saw (the number a sweep reports, luck included); "its pick": the expected accuracy of the '
        "settings it would hand over (the surrogate's mean, no luck). Every search: `concurrency.csv`.",
        "",
        "| strategy | at once | trials | "
        + " | ".join(f"best seen at {m}x grid budget | its pick at {m}x grid budget" for m in multiples)
        + " |",
        "| --- | --- | --- | " + " | ".join("--- | ---" for _ in multiples) + " |",
    ]
    for (strategy, concurrency), mine in groups:
        cells = [f"{cell(strategy, concurrency, f'{k} at {m}x')}" for m in multiples for k in ("best seen", "pick")]
        lines.append(f"| {strategy} | {concurrency} | {int(mine['trials'].iloc[0])} | " + " | ".join(cells) + " |")
    low, high = min(concurrencies), max(concurrencies)
    lines += [
        "",
        f"Goals (issue 31), at {high} at once: the difference of the means over search seeds, paired by seed, with its 95% "
        "interval in points (benchmarks/stats.py); a goal holds only when the interval is on its side of 0:",
    ]

    def per_seed(strategy: str, c: int, column: str) -> list[float]:
        mine = table[(table["strategy"] == strategy) & (table["concurrency"] == c)].sort_values("seed")
        return list(mine[column])

    for m in multiples:
        for k in ("pick", "best seen"):
            column = f"{k} at {m}x"
            base_high, base_low, rand = (
                per_seed(base, high, column),
                per_seed(base, low, column),
                per_seed("random", high, column),
            )
            d = difference(base_high, base_low)
            lines.append(
                f"- {m}x grid budget, {k}: {base} at {high} at once no worse than at {low} at once: **{d.verdict('no worse')}** "
                f"({100 * np.mean(base_high):.2f}% vs {100 * np.mean(base_low):.2f}%; difference {d.format(100)})"
            )
            d = difference(base_high, rand)
            lines.append(
                f"- {m}x grid budget, {k}: {base} at {high} at once better than random search at {high} at once: "
                f"**{d.verdict('higher')}** ({100 * np.mean(base_high):.2f}% vs {100 * np.mean(rand):.2f}%; difference {d.format(100)})"
            )
    (out / "concurrency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
