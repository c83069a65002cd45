"""Every run says how to reproduce it: versions, the git commit, the command line."""

import subprocess

from kdsearch.runtime.provenance import as_tags, git_state, provenance


def test_versions_and_the_command_line_are_recorded():
    record = provenance(["/usr/bin/kdsearch", "sweep", "space.yaml", "--name", "a b"])
    assert record["command"] == "kdsearch sweep space.yaml --name 'a b'"
    assert {"kdsearch", "torch", "ray", "optuna", "mlflow"} <= set(record["versions"])
    tags = as_tags(record)
    assert tags["kdsearch.command"] == record["command"] and tags["kdsearch.version.torch"] == record["versions"]["torch"]


def test_the_git_commit_and_uncommitted_changes(tmp_path):
    assert git_state(tmp_path) == {}  # not a repository
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-qm", "one"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
