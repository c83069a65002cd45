"""Sweeps kept in object storage (--storage s3://...), against a local S3 server (moto) that the
test starts: the sweep, its report and best/ in the bucket, and report/export/sync from the URI
on a machine that has nothing of the sweep but the URI."""

import dataclasses
import json
import logging
from pathlib import Path

import boto3
import pytest
from conftest import free_port

from kdsearch import cli
from kdsearch.errors import UserError
from kdsearch.sweeper.run import SweepOptions, run_sweep

pytestmark = pytest.mark.slow  # Ray and a server: `pytest -m "not slow"` skips them

BUCKET = "kdsearch-test"


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's access log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def _keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"].removeprefix(prefix) for page in pages for item in page.get("Contents", [])}


def test_a_sweep_in_s3_reports_and_exports_from_the_uri_anywhere(s3, tmp_path, monkeypatch, capsys, local_ray):
    space = tmp_path / "space.yaml"
    space.write_text(f"""
name: ins3
fixed: {{method: kd, dataset: digits, teacher: resnet8, teacher_epochs: 2, student: resnet8, epochs: 2,
        cache_dir: {tmp_path / "teachers"}}}
space:
  alpha: {{uniform: [0.1, 0.9]}}
search: {{num_samples: 2, sampler: random, scheduler: fifo, seed: 0}}
""")
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "driver-cache"))
    storage = f"s3://{BUCKET}/sweeps"
    db = f"sqlite:///{tmp_path / 'm.db'}"
    opts = SweepOptions(storage=storage, tracking_uri=db, verbose=0, register=False)
    summary = run_sweep(space, opts, log=lambda _: None)
    assert summary.sweep_dir == f"{storage}/ins3"

    # Everything the sweep wrote is in the bucket: Ray's trials and kdsearch's manifest, best/ and report.
    keys = _keys(s3, "sweeps/ins3/")
    trials = sorted({k.split("/")[0] for k in keys if k.startswith("trial_")})
    assert len(trials) == 2 and all(f"{t}/result.json" in keys for t in trials)
    assert {"sweep.json", "best/student.pt", "best/config.yaml", "best/metrics.json", "report/trials.csv"} <= keys
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="sweeps/ins3/sweep.json")["Body"].read())
    assert manifest["sweep_dir"] == f"{storage}/ins3" and manifest["best_trial"] == summary.table.iloc[0]["trial"]

    # A second start of the same sweep is refused, as for a local folder.
    with pytest.raises(UserError, match=r"a sweep named 'ins3' already exists in s3://"):
        run_sweep(space, opts, log=lambda _: None)
    # --resume continues it from the bucket (here: nothing left to run, the same trials and best).
    again = run_sweep(space, dataclasses.replace(opts, resume=True), log=lambda _: None)
    assert sorted(again.table["trial"]) == sorted(summary.table["trial"]) and again.best_params == summary.best_params

    # Another machine: nothing local but the URI (a fresh cache, another folder).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("KDSEARCH_CACHE", str(elsewhere / "cache"))
    s3.delete_object(Bucket=BUCKET, Key="sweeps/ins3/report/trials.csv")
    assert cli.main(["report", f"{storage}/ins3", "--no-mlflow"]) == 0
    assert f"(also to {storage}/ins3/report)" in capsys.readouterr().out
    assert "report/trials.csv" in _keys(s3, "sweeps/ins3/")  # written again, into the bucket

    assert cli.main(["export", f"{storage}/ins3", "--format", "onnx", "--out", "best-export"]) == 0
    alphas = dict(zip(summary.table["trial"], summary.table["alpha"]))

    def alpha_of(export):
        return json.loads((elsewhere / export / "model.json").read_text())["distillation"]["method_args"]["alpha"]

    assert alpha_of("best-export") == pytest.approx(alphas[manifest["best_trial"]])
    other = next(t for t in trials if t.removeprefix("trial_") != manifest["best_trial"]).removeprefix("trial_")
    # As a trial ASHA stopped at a rung leaves it: its last checkpoint holds the state, no student file.
    last = max(k for k in keys if k.startswith(f"trial_{other}/checkpoint_") and k.endswith("/student.pt"))
    s3.delete_object(Bucket=BUCKET, Key=f"sweeps/ins3/{last}")
    assert cli.main(["export", "ins3", "--storage", storage, "--trial", other, "--format", "onnx", "--out", "other"]) == 0
    assert alpha_of("other") == pytest.approx(alphas[other]) != pytest.approx(alphas[manifest["best_trial"]])

    assert cli.main(["sync", f"{storage}/ins3", "--tracking-uri", f"sqlite:///{elsewhere / 'here.db'}"]) == 0
    assert f"synced 2 trials of {storage}/ins3" in capsys.readouterr().out

    # A sweep that is not there, and a name under a URI storage, are one line each.
    assert cli.main(["report", f"{storage}/nothing"]) == 2
    assert "no sweep at s3://kdsearch-test/sweeps/nothing" in capsys.readouterr().err


def test_a_storage_server_that_is_down_stops_the_sweep_before_anything_trains(s3, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    space = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    code = cli.main(
        ["sweep", str(space), "--storage", f"s3://{BUCKET}/sweeps", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"kdsearch: error: cannot reach the storage s3://{BUCKET}/sweeps (") and "AWS_ENDPOINT_URL" in err[0]
    assert not (tmp_path / "cache" / "teachers").exists()  # no teacher trained


def test_a_bucket_that_does_not_exist_is_one_line(s3, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "cache"))
    space = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    code = cli.main(
        ["sweep", str(space), "--storage", "s3://no-such-bucket/sweeps", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "s3://no-such-bucket/sweeps" in err, err
