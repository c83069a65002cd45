"""MLflow runs of a sweep (MLflow's other home is ``delivery/registry.py``: the registered model).

One experiment per sweep name; a parent run for the sweep and a child run per trial.
Trials are logged live from the driver (one batched call per epoch, not one per
metric), and ``sync`` fills in whatever is missing afterwards (a resumed sweep, a
tracking server that was down for a while), so each trial appears exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per download is noise in a CLI

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

from kdsearch.errors import UserError, first_line  # noqa: E402
from kdsearch.tracking.leaderboard import TOP_HEADING, leaderboard  # noqa: E402
from kdsearch.tracking.live import LiveLog  # noqa: E402

TRIAL_TAG = "kdsearch.trial_id"
SWEEP_TAG = "kdsearch.sweep_dir"
ROLE_TAG = "kdsearch.role"
TOP_TAG = "kdsearch.top_trials"  # the parent run's best trials' run ids, best first (JSON)
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (Markdown)
TOP_TRIALS = 10
_LOG = logging.getLogger("kdsearch.tracking.runs")
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."


def _metrics(values: dict, step: int, timestamp: int) -> list[Metric]:
    out = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if key in (
            "training_iteration",
            "time_this_iter_s",
            "time_total_s",
            "timestamp",
            "time_since_restore",
            "iterations_since_restore",
            "pid",
        ):
            continue  # Ray's bookkeeping, not the trial's metrics
        out.append(Metric(key, float(value), timestamp, step))
    return out


def _step(result: dict) -> int:
    """The MLflow step of a trial's result: its epoch (Tune's training_iteration where it has none)."""
    return int(result.get("epoch") or result.get("training_iteration") or 0)


def _str(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def probe_server(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """One short request to an HTTP tracking server before anything else: MLflow's client
    retries a refused connection for minutes (7 retries, backing off), which is right for a
    server that blinks mid-sweep but not for one that is not there at all. Any HTTP answer,
    even an error status, means a server is there."""
    if not tracking_uri.startswith(("http://", "https://")):
        return

    try:
        # The proxies of the environment now, as MLflow's client will use them (urlopen's opener
        # keeps those of its first call in this process).
        urllib.request.build_opener().open(tracking_uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        text = getattr(reason, "strerror", None) or str(reason) or type(exc).__name__
        raise UserError(
            f"MLflow tracking at {tracking_uri} is unreachable ({text}): start the server or pass another --tracking-uri"
        ) from None


class SweepTracker:
    """Logs a sweep to MLflow. Picklable (Ray stores it with the experiment): the client
    and caches are rebuilt after unpickling."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_dir: str, tags: dict[str, str]):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_dir = sweep_dir
        self.tags = dict(tags)
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._steps: dict[str, int] = {}  # trial id -> last step logged
        self._new_parent = False  # True: this process created the parent run, so no trial run exists yet
        self._listed = False  # True: the experiment's existing trial runs are all in _runs
        self.live = LiveLog()  # the events while the trials run, logged off Tune's loop

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_client", "_runs", "_steps", "_new_parent", "_listed", "live"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    @property
    def seconds(self) -> float:
        """Spent logging to MLflow, in this process."""
        return self.live.seconds

    def drain(self, timeout: float = 120.0) -> bool:
        return self.live.drain(timeout)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # -- set-up -----------------------------------------------------------------

    def start(self, params: dict[str, Any]) -> str:
        """Check the server answers, then find or create the experiment and the parent run."""
        probe_server(self.tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(self.experiment)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types for an unreachable store
            first = first_line(exc, 160)
            raise UserError(
                f"MLflow tracking at {self.tracking_uri} is unreachable ({first}): start the server or pass another --tracking-uri"
            ) from None
        # Tagged as model training, the MLflow 3 UI opens it on its runs table, not its GenAI overview.
        self.experiment_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(self.experiment, tags={"mlflow.experimentKind": "custom_model_development"})
        )
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{SWEEP_TAG}` = '{self.sweep_dir}' and tags.`{ROLE_TAG}` = 'sweep'", max_results=1
        )
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self.client.log_batch(
                self.parent_id, tags=[RunTag(k, str(v)) for k, v in self.tags.items()]
            )  # e.g. this run's command
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=self.experiment, tags={**self.tags, SWEEP_TAG: self.sweep_dir, ROLE_TAG: "sweep"}
            )
            self.parent_id = run.info.run_id
            self._new_parent = True
            self.client.log_batch(self.parent_id, params=[Param(k, _str(v)[:6000]) for k, v in params.items()])
        return self.parent_id

    # -- live events from the sweep (never raise: a tracking hiccup must not stop training) --

    def _existing_trial_runs(self) -> None:
        """Every trial run the experiment already holds, in pages of 1,000: one query for the whole
        sweep, not one per trial (each of which scans the experiment: quadratic in trials;
        benchmarks/large_sweep_io.py)."""
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'", max_results=1000, page_token=token
            )
            for run in page:
                trial_id = run.data.tags.get(TRIAL_TAG)
                if trial_id and trial_id not in self._runs:
                    self._runs[trial_id] = run.info.run_id
                    self._steps[trial_id] = int(run.data.metrics.get("epoch", 0))  # the last epoch logged
            token = page.token
            if not token:
                break
        self._listed = True

    def _run_for(self, trial_id: str, params: dict) -> str:
        if trial_id in self._runs:
            return self._runs[trial_id]
        # A trial of a resumed sweep may have its run already; a new sweep's cannot, unless an
        # outage cut its logging short. The experiment's trial runs are listed once, not searched per trial.
        if not (self._new_parent and not self.live.offline) and not self._listed:
            self._existing_trial_runs()
            if trial_id in self._runs:
                return self._runs[trial_id]
        tags = {**self.tags, TRIAL_TAG: trial_id, ROLE_TAG: "trial", "mlflow.parentRunId": self.parent_id}
        run_id = self.client.create_run(self.experiment_id, run_name=f"trial_{trial_id}", tags=tags).info.run_id
        self.client.log_batch(run_id, params=[Param(k, _str(v)[:6000]) for k, v in params.items()])
        self._steps[trial_id] = 0
        self._runs[trial_id] = run_id
        return run_id

    def run_ids(self) -> dict[str, str]:
        """Trial id -> the MLflow run it is logged in, as far as this process knows."""
        return dict(self._runs)

    def trial_started(self, trial_id: str, params: dict) -> None:
        self.live.submit(self._run_for, trial_id, params)

    def _log_epoch(self, trial_id: str, params: dict, result: dict) -> None:
        run_id = self._run_for(trial_id, params)
        step = _step(result)
        if step <= self._steps.get(trial_id, 0):
            return  # already logged (a resumed trial repeats nothing)
        metrics = _metrics(result, step, int(time.time() * 1000))
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        self._steps[trial_id] = step
        for key in ("trial/error",):
            if key in result:
                self.client.set_tag(run_id, "kdsearch.error", str(result[key])[:500])

    def trial_result(self, trial_id: str, params: dict, result: dict) -> None:
        self.live.submit(self._log_epoch, trial_id, params, dict(result))

    def trial_finished(self, trial_id: str, status: str, error: str | None = None) -> None:
        def finish():
            run_id = self._runs.get(trial_id)
            if run_id is None:
                return
            if error:
                self.client.set_tag(run_id, "kdsearch.error", error)
            self.client.set_terminated(run_id, status)

        self.live.submit(finish)

    # -- after the sweep -----------------------------------------------------------

    def sync(self, trials) -> int:
        """Make MLflow hold every trial's whole history exactly once; returns epochs added."""
        self.drain()
        started = time.perf_counter()
        # After a drain that gave up, the live thread may still be in a call (creating a trial's
        # run, say): wait for that one call (the ones queued behind it are skipped, offline),
        # so the catch-up never makes a trial a second run.
        try:
            with self.live.busy:
                return self._sync(trials)
        finally:
            self.live.seconds += time.perf_counter() - started

    def _sync(self, trials) -> int:
        added = 0
        for trial in trials:
            run_id = self._run_for(trial.trial_id, trial.params)
            start = self._steps.get(trial.trial_id, 0)
            metrics = []
            for row in trial.history:
                step = _step(row)
                if step > start:
                    metrics += _metrics(row, step, int(row.get("timestamp", time.time()) * 1000))
                    added += 1
            tags = [RunTag("kdsearch.status", trial.status)]
            if trial.error:
                tags.append(RunTag("kdsearch.error", trial.error[:500]))
            chunks = [metrics[i : i + 900] for i in range(0, len(metrics), 900)] or [[]]  # at most 1000 metrics a batch
            for i, chunk in enumerate(chunks):
                self.client.log_batch(run_id, metrics=chunk, tags=tags if i == len(chunks) - 1 else [])
            if trial.history:
                self._steps[trial.trial_id] = max(_step(r) for r in trial.history)
            self.client.set_terminated(run_id, "FAILED" if trial.status == "ERROR" else "FINISHED")
        return added

    def log_best(self, best_params: dict, best_config: dict, metrics: dict, student_path: Path) -> None:
        """The best config (``best.*`` tags + YAML), its compression metrics and its student, on the
        parent run (``delivery.registry.register_student`` registers it as a model that serves without
        kdsearch). Tags, not params: a resumed sweep that finds a better
        trial replaces them (MLflow refuses to change a param)."""
        import yaml

        run_id = self.parent_id
        self.client.log_batch(
            run_id,
            metrics=_metrics(metrics, 0, int(time.time() * 1000)),
            tags=[RunTag(f"best.{k}", _str(v)[:5000]) for k, v in best_params.items()],
        )
        with tempfile.TemporaryDirectory() as folder:
            config_path = Path(folder) / "best_config.yaml"
            config_path.write_text(yaml.safe_dump(best_config, sort_keys=False))
            self.client.log_artifact(run_id, str(config_path))
        self.client.log_artifact(run_id, str(student_path), artifact_path="best_student")

    def log_top(self, ranked, objective, n: int = TOP_TRIALS) -> list[str]:
        """The parent run's description in the MLflow UI: the best ``n`` of the ``ranked`` trials
        (``search.record.ranked``: best first, by ``objective``), linked, with their scores and settings, and a link
        to MLflow's page comparing them, so a sweep of 2,000 trials is compared without scrolling
        its runs table. Their run ids, best first, in ``TOP_TAG``. A description the user wrote is
        kept. Returns those run ids."""
        scored = [t for t in ranked if t.usable(objective)]
        top = [t for t in scored if t.trial_id in self._runs][:n]
        if not top:
            return []
        ids = [self._runs[t.trial_id] for t in top]
        note = leaderboard(top, len(scored), objective, self._runs, self.experiment_id)
        tags = [RunTag(TOP_TAG, json.dumps(ids))]
        current = self.client.get_run(self.parent_id).data.tags.get(NOTE_TAG)
        if not current or current.startswith(TOP_HEADING):
            tags.append(RunTag(NOTE_TAG, note[:8000]))
        self.client.log_batch(self.parent_id, tags=tags)
        return ids

    def log_methods(self, best_by_method: list[dict], metric: str) -> None:
        """A sweep that compares methods: each method's best score as a metric on the parent run
        (``<method>/best_<metric>``), the best method as the tag ``best.method``."""
        scores = {f"{row['method']}/best_{metric}": row[f"best {metric}"] for row in best_by_method}
        self.client.log_batch(
            self.parent_id,
            metrics=_metrics(scores, 0, int(time.time() * 1000)),
            tags=[RunTag("best.method", str(best_by_method[0]["method"]))],
        )

    def finish(self, status: str = "FINISHED") -> None:
        self.drain()
        self.client.set_terminated(self.parent_id, status)


def _client_for_run(run_id: str, tracking_uri: str):
    client = MlflowClient(tracking_uri)
    try:
        return client, client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - not found, or the store is unreachable
        first = first_line(exc, 160)
        raise UserError(
            f"no MLflow run {run_id} at {tracking_uri} ({first}): pass a sweep folder, a sweep name, or --tracking-uri"
        ) from None


def download_best_student(run_id: str, tracking_uri: str, dest_dir: Path) -> Path:
    """The best student checkpoint logged on a sweep's parent run."""
    client, _ = _client_for_run(run_id, tracking_uri)
    try:
        path = client.download_artifacts(run_id, "best_student/student.pt", str(dest_dir))
    except Exception:  # noqa: BLE001
        raise UserError(f"MLflow run {run_id} has no best_student/student.pt artifact: pass the sweep's parent run id") from None
    return Path(path)


def sweep_dir_of_run(run_id: str, tracking_uri: str) -> str:
    _, run = _client_for_run(run_id, tracking_uri)
    sweep_dir = run.data.tags.get(SWEEP_TAG)
    if not sweep_dir:
        raise UserError(f"MLflow run {run_id} is not a kdsearch sweep run (no {SWEEP_TAG} tag): pass the sweep's parent run id")
    return sweep_dir


def log_report_to_run(run_id: str, tracking_uri: str, files: list[Path]) -> None:
    client, _ = _client_for_run(run_id, tracking_uri)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="report")


def experiment_urls(tracking_uri: str, base_url: str, name: str | None = None) -> dict[str, str]:
    """``{experiment name: address in the UI}`` for kdsearch's experiments (or the one named)."""
    client = MlflowClient(tracking_uri)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    if name is not None:
        experiments = [e for e in experiments if e.name == name]
        if not experiments:
            raise UserError(
                f"no experiment named {name!r} at {tracking_uri}: pass the sweep's --name, or leave it out to list all"
            )
    return {e.name: f"{base_url}/#/experiments/{e.experiment_id}/runs" for e in experiments}


def start_ui_server(tracking_uri: str, port: int, host: str = "127.0.0.1", timeout_s: float = 90.0):
    """Start ``mlflow server`` for a local store, bound to ``host``; returns (process, base URL)."""

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no MLflow store at {tracking_uri}: run a sweep here first, or pass --tracking-uri")
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise UserError(f"port {port} on {host} is already in use: pass another --port")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 2 processes instead of 10
    args = ["--backend-store-uri", tracking_uri, "--host", host, "--port", str(port), "--workers", "1"]
    if tracking_uri.startswith("sqlite:///"):  # artifacts sent through the server stay beside the database
        args += ["--artifacts-destination", str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    url = f"http://{host}:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # our own server: never through an http_proxy
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise UserError(f"the MLflow UI server stopped at start ({err[-1][:200] if err else 'no message'})")
        try:
            direct.open(f"{url}/health", timeout=2).close()
            return proc, url
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)  # the server and the uvicorn it started
    raise UserError(f"the MLflow UI server did not answer on {url} within {timeout_s:.0f} s")
