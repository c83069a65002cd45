"""A two-node Ray cluster on this machine (Ray's own cluster utility): trials run on both
nodes, and killing the worker node mid-trial moves its trial to the survivor, from its checkpoint."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray
from conftest import free_port
from ray.cluster_utils import Cluster

from kdsearch.errors import UserError
from kdsearch.ray_trials import start_ray
from kdsearch.sweeper.run import SweepOptions, run_sweep

pytestmark = pytest.mark.slow  # Ray, subprocesses or a browser: `pytest -m "not slow"` skips them

# Long enough that the first trial is still running when the second trial's actor has started on
# the other node: Tune starts one pending trial at a time with a searcher, and with actor reuse a
# trial that ends first hands its actor (on its node) to the next trial (seen with 4 s trials;
# 40 epochs are about 8 s here).
EPOCHS = 40


def kill_processes_mentioning(text: str) -> None:
    """SIGKILL every process whose command line contains ``text`` (one cluster's temp folder)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _epochs_by_trial(folder):
    out = {}
    for result in folder.glob("trial_*/result.json"):
        lines = []
        for line in result.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                break
        out[result.parent.name] = lines
    return out


def test_trials_use_both_nodes_and_survive_losing_one(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 200 * 1024**2})
    worker = cluster.add_node(num_cpus=1, object_store_memory=200 * 1024**2)
    head_id = cluster.head_node.node_id
    space = tmp_path / "cl.yaml"
    space.write_text(f"""
name: cl
fixed: {{method: ce, dataset: digits, epochs: {EPOCHS}, cache_dir: {tmp_path / "cache"}}}
space:
  lr: {{loguniform: [3e-2, 1e-1]}}
search: {{num_samples: 2, scheduler: fifo, seed: 0, max_failures: 2, checkpoint_every: 1}}
""")
    folder = tmp_path / "s" / "cl"
    killed = {}

    def kill_worker_node_mid_trial():
        deadline = time.time() + 240
        while time.time() < deadline:
            for trial, lines in _epochs_by_trial(folder).items():
                if len(lines) >= 3 and lines[-1].get("trial/node") == worker.node_id:
                    killed.update(trial=trial, epoch=lines[-1]["epoch"])
                    cluster.remove_node(worker, allow_graceful=False)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_worker_node_mid_trial, daemon=True)
    killer.start()
    try:
        opts = SweepOptions(
            address=cluster.address,
            storage=str(tmp_path / "s"),
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
            verbose=0,
            register=False,
        )
        # a folder on this machine, two nodes: refused before any trial unless every node mounts it
        with pytest.raises(UserError, match=r"is a folder on this machine but the Ray cluster has 2 nodes: pass --storage s3://"):
            run_sweep(space, dataclasses.replace(opts, name="local"), log=lambda _: None)
        assert not list((tmp_path / "s").glob("local/trial_*"))
        summary = run_sweep(space, dataclasses.replace(opts, shared_storage=True), log=lambda _: None)
    finally:
        killer.join(timeout=5)
        cluster.shutdown()

    histories = _epochs_by_trial(folder)
    starts = {
        k: (v[0].get("trial/node", "")[:8], round(v[0]["timestamp"] - v[0]["time_this_iter_s"], 1)) for k, v in histories.items()
    }
    assert killed, (
        f"no trial ever ran on the worker node {worker.node_id[:8]} (head {head_id[:8]}); trials' first node and start: {starts}"
    )
    nodes = {line.get("trial/node") for lines in histories.values() for line in lines}
    assert worker.node_id in nodes and len(nodes) == 2  # trials were placed on both nodes
    moved = histories[killed["trial"]]
    epochs = [line["epoch"] for line in moved]
    assert epochs[-1] == EPOCHS and moved[-1]["trial/node"] != worker.node_id  # finished on the survivor
    restart = next(i for i, line in enumerate(moved) if line["trial/node"] != worker.node_id)
    assert epochs[restart] > 1  # resumed from its checkpoint, not from scratch
    assert sorted(set(epochs)) == list(range(1, EPOCHS + 1))
    assert len(summary.table) == 2 and set(summary.table["status"]) == {"ok"}


def test_a_two_node_ray_start_cluster_streams_from_files_only_in_a_folder_every_node_mounts(tmp_path):
    # Two nodes started as a user starts them (`ray start --head`, then `ray start --address`).
    # Streamed data is files the trials map, written on this machine: refused on 2 nodes in one
    # line unless the folder is one every node mounts (--shared-storage, as for --storage); then
    # the trials on both nodes train from the same files.
    space = tmp_path / "st.yaml"
    space.write_text(f"""
name: st
fixed: {{method: ce, dataset: digits, epochs: {EPOCHS}, data_placement: stream, cache_dir: {tmp_path / "cache"}}}
space:
  lr: {{choice: [0.05, 0.1]}}
search: {{sampler: grid, scheduler: fifo}}
""")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "RAY_AUTH_MODE": "disabled"}
    bin_dir = Path(sys.executable).parent
    temp = tempfile.mkdtemp(prefix="kdray")  # short: Ray's socket paths must fit 107 characters
    node = ["--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]
    sweep = [str(bin_dir / "kdsearch"), "sweep", str(space), "--address", f"127.0.0.1:{port}", "--storage", str(tmp_path / "s")]
    sweep += ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    try:
        head = [str(bin_dir / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]
        subprocess.run([*head, *node], cwd="/", env=env, check=True, capture_output=True)
        subprocess.run(
            [str(bin_dir / "ray"), "start", f"--address=127.0.0.1:{port}", *node],
            cwd="/",
            env=env,
            check=True,
            capture_output=True,
        )
        refused = subprocess.run([*sweep, "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        shared = subprocess.run([*sweep, "--shared-storage"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    finally:
        kill_processes_mentioning(temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert (
        f"the streamed data's files are written under {tmp_path / 'cache'}, a folder on this machine, but the Ray cluster has "
        "2 nodes: set cache_dir to a folder every node mounts and pass --shared-storage" in refused.stderr
    )
    assert shared.returncode == 0, shared.stderr[-2000:]
    assert "data placement: stream (as asked;" in shared.stdout + shared.stderr and "best student: val/acc" in shared.stdout
    histories = _epochs_by_trial(tmp_path / "s" / "st")
    assert len(histories) == 2 and all(len(h) == EPOCHS for h in histories.values())
    assert len({line["trial/node"] for h in histories.values() for line in h}) == 2  # both nodes trained from the files


def test_fractional_gpu_trials_share_one_gpu(tmp_path):
    # A cluster that declares one GPU (Ray schedules by declared resources; here the trials then
    # train on the CPU): with --gpus-per-trial 0.5 two trials hold the same GPU at the same time.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "object_store_memory": 200 * 1024**2})
    space = tmp_path / "gpu.yaml"
    space.write_text(f"""
name: gpu
fixed: {{method: ce, dataset: digits, epochs: 12, threads: 1, cache_dir: {tmp_path / "cache"}}}
space:
  lr: {{choice: [0.05, 0.1]}}
search: {{sampler: grid, scheduler: fifo}}
""")
    try:
        opts = SweepOptions(
            address=cluster.address,
            gpus_per_trial=0.5,
            storage=str(tmp_path / "s"),
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
            verbose=0,
            register=False,
        )
        summary = run_sweep(space, opts, log=lambda _: None)
    finally:
        cluster.shutdown()
    histories = list(_epochs_by_trial(tmp_path / "s" / "gpu").values())
    assert len(histories) == 2 and all(len(h) == 12 for h in histories)
    assert all(line["trial/gpu_ids"] == "0" for h in histories for line in h)  # both were given GPU 0
    spans = [(h[0]["timestamp"] - h[0]["time_this_iter_s"], h[-1]["timestamp"]) for h in histories]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # and held it at the same time
    assert set(summary.table["status"]) == {"ok"}


def test_an_address_nothing_answers_on_is_a_one_line_error():
    # ray.init would retry such an address for minutes; kdsearch says so at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing listens once this socket is closed
    with pytest.raises(
        UserError,
        match=rf"cannot reach the Ray cluster at '127.0.0.1:{port}' \(Connection refused\): start it with `ray start --head`",
    ):
        start_ray(f"127.0.0.1:{port}")
    assert not ray.is_initialized()


def test_a_users_model_module_reaches_a_ray_start_cluster_without_being_installed(tmp_path):
    # The cluster is started apart from the sweep (`ray start --head`, from another folder, with no
    # PYTHONPATH): its workers can import the user's mynets.py only if kdsearch sends it to them.
    code = tmp_path / "project"
    code.mkdir()
    (code / "mynets.py").write_text(
        "from torch import nn\n\n\n"
        "def small_cnn(num_classes, in_channels, width=8):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(width, num_classes))\n"
    )
    (code / "space.yaml").write_text(f"""
name: own
fixed: {{method: ce, dataset: digits, student: mynets:small_cnn, student_args: {{width: 6}}, epochs: 2, cache_dir: {tmp_path / "cache"}}}
space:
  lr: {{choice: [0.05, 0.1]}}
search: {{sampler: grid, scheduler: fifo}}
""")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bin_dir = Path(sys.executable).parent
    # Its own temporary folder (short: Ray's socket paths must fit 107 characters), so that
    # stopping it stops this cluster only, not every Ray on the machine as `ray stop` would.
    temp = tempfile.mkdtemp(prefix="kdray")
    start = [str(bin_dir / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    subprocess.run(
        [*start, "--object-store-memory=200000000", "--disable-usage-stats", f"--temp-dir={temp}"],
        cwd="/",
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        proc = subprocess.run(
            [str(bin_dir / "kdsearch"), "sweep", "space.yaml", "--address", f"127.0.0.1:{port}", "--quiet"],
            cwd=code,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        kill_processes_mentioning(temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "best student: val/acc" in proc.stdout
    histories = _epochs_by_trial(code / "sweeps" / "own")
    assert len(histories) == 2 and all(len(h) == 2 for h in histories.values())


def test_trials_ask_for_one_gpu_by_default_when_the_cluster_has_gpus():
    # With the default, a cluster with GPUs gives each trial one of its own (and a trial without a
    # GPU trains on the CPU, never on a GPU it was not given); a cluster without GPUs asks for none.
    from kdsearch.ray_trials import gpus_per_trial_default

    for gpus, expected in ((2, 1.0), (0, 0.0)):
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": gpus, "object_store_memory": 100 * 1024**2}
        )
        try:
            ray.init(address=cluster.address, log_to_driver=False)
            assert gpus_per_trial_default(None) == expected and gpus_per_trial_default(0.25) == 0.25
        finally:
            ray.shutdown()
            cluster.shutdown()


def test_a_head_without_a_gpu_prepares_the_teacher_on_a_gpu_node(tmp_path):
    # The driver (head) has no GPU, a worker node declares one: the teacher is trained and its
    # outputs computed in a Ray task holding that GPU, not on the driver's CPU.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "object_store_memory": 200 * 1024**2})
    worker = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=200 * 1024**2)
    space = tmp_path / "t.yaml"
    space.write_text(f"""
name: t
fixed: {{method: kd, dataset: digits, epochs: 1, teacher: resnet8, teacher_epochs: 1, cache_dir: {tmp_path / "cache"}}}
space:
  temperature: {{choice: [4.0]}}
search: {{sampler: grid, scheduler: fifo}}
""")
    logs = []
    try:
        opts = SweepOptions(
            address=cluster.address,
            storage=str(tmp_path / "s"),
            shared_storage=True,
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
            verbose=0,
            register=False,
        )
        summary = run_sweep(space, opts, log=logs.append)
    finally:
        cluster.shutdown()
    assert any(f"prepared on GPU node {worker.node_id[:8]} (this driver has no GPU)" in line for line in logs), logs
    assert list((tmp_path / "cache" / "teachers").glob("digits-resnet8-*.pt"))
    history = next(iter(_epochs_by_trial(tmp_path / "s" / "t").values()))
    assert history[-1]["trial/gpu_ids"] == "0"  # and the trial, by default, asked for the GPU
    assert set(summary.table["status"]) == {"ok"}
