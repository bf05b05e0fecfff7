"""Working as a team (README: "Working as a team"), end to end with the real `dvc` commands on the small
archive: a shared DVC remote on S3 (moto's S3 server on loopback, in this process), a queued parameter
sweep, and experiments shared through a bare git repository on disk plus that remote.

The S3 tests skip, saying why, where moto's server or dvc-s3 is missing (`pip install -e '.[test]'`
installs both) or the server cannot listen on loopback; the queue test needs neither.
"""
from __future__ import annotations

import hashlib
import json
import sys
import threading
import tomllib
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.dvc_project import ROOT, Project, make_project, small
from tests.dvc_queue import end_workers, experiments, metric, queue, run_queue
from tests.small_archive import GROUPS

REMOTE, BUCKET = "team", "team-cache"
ENV = {
    # moto accepts any credentials; DVC reads them from the environment, as a teammate's would be.
    "AWS_ACCESS_KEY_ID": "team-test-key", "AWS_SECRET_ACCESS_KEY": "team-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    # botocore gives up on a dead server at once (s3fs still retries a few times, about 2 s).
    "AWS_MAX_ATTEMPTS": "1",
    # these tests are about DVC, not training speed: no 50 s build of the native ops for the session.
    "LSTM_VS_GRU_NATIVE": "off",
}
DAMAGED = b"not a model: damaged in storage"


class S3Server:
    """Moto's S3 API on 127.0.0.1, served from this process. Its buckets live in moto's in-memory backend,
    which outlasts `stop()`: a `start()` on the same port finds them again, as a real server finds its disk.
    `crash_after = N` stops the server in the middle of a push: it accepts N uploads (PUT requests), drops
    the connection of the next one, and shuts down; every later request finds nothing listening."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self._app = DomainDispatcherApplication(create_backend_app)
        self.port = 0
        self.puts = 0
        self.crash_after: int | None = None
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from werkzeug.serving import make_server

        self.puts = 0
        self._server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True,
                                   request_handler=_quiet_handler())
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()

    def wait_stopped(self, timeout: float = 30) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the S3 server did not stop"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=ENV["AWS_DEFAULT_REGION"],
                            aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"])

    def objects(self, bucket: str) -> dict[str, str]:
        """Every object in the bucket: key -> ETag."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}

    def _wsgi(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "PUT" and self.crash_after is not None:
            with self._lock:
                self.puts += 1
                crash = self.puts > self.crash_after
                first = self.puts == self.crash_after + 1
            if crash:
                if first:
                    threading.Thread(target=self.stop, daemon=True).start()
                raise ConnectionResetError("the S3 server is stopping")  # werkzeug drops the connection
        return self._app(environ, start_response)


def _quiet_handler():
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args) -> None:
            pass

        def connection_dropped(self, error, environ=None) -> None:
            self.close_connection = True  # do not read the dropped upload's body as the next request

    return QuietHandler


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    needed = (("dvc_s3", "dvc-s3"), ("boto3", "boto3"), ("moto.moto_server.werkzeug_app", "moto[server]"))
    for module, package in needed:
        pytest.importorskip(module, reason=f"{package} is not importable (pip install -e '.[test]')",
                            exc_type=ImportError)
    server = S3Server()
    try:
        server.start()
    except OSError as error:
        pytest.skip(f"moto's S3 server cannot listen on 127.0.0.1: {error}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_archive) -> Iterator[Project]:
    """Alice's project: the whole pipeline reproduced and committed, with the team's S3 remote in the
    committed config (default, hashes checked on download) and nothing secret in it."""
    project = make_project(tmp_path_factory.mktemp("alice"), small_archive, **small(**{"train.epochs": 1, "train.seeds": [0]}))
    project.env.update(ENV)
    project.dvc("remote", "add", "-d", REMOTE, f"s3://{BUCKET}/cache")
    project.dvc("remote", "modify", REMOTE, "verify", "true")
    project.repro()
    project.commit("baseline run, team remote")
    yield project
    end_workers(project)


@pytest.fixture(scope="module")
def alice(s3, trained) -> Project:
    """Alice's project connected to the S3 server; the bucket exists."""
    s3.client().create_bucket(Bucket=BUCKET)
    connect(trained, s3)
    return trained


def connect(project: Project, server: S3Server, remote: str = REMOTE) -> None:
    """The endpoint of the test server (its port changes every run) in the clone's untracked config."""
    project.dvc("remote", "modify", "--local", remote, "endpointurl", server.url)


def clone(source: Path, path: Path, env: dict) -> Project:
    """A teammate's clone: git only, no DVC cache, no workspace data."""
    Project(path.parent).run("git", "clone", "-q", str(source), str(path))
    project = Project(path)
    project.env = dict(env)
    return project


def console_script(name: str) -> list[str]:
    """The command behind a console script as this checkout's pyproject.toml declares it, run on the
    project copy's own code (the working folder comes first on `python -c`'s path): what `pip install`
    makes of the script here, whichever checkout the environment happens to have installed."""
    module, function = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def without_credentials(env: dict) -> dict:
    return {name: value for name, value in env.items()
            if name not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


def runs(project: Project) -> set[str]:
    """The run records in the project's DVC cache."""
    return {path.name for path in (project.path / ".dvc/cache/runs").glob("*/*/*")}


def reset(project: Project) -> None:
    """The committed state, whatever a test changed in the workspace."""
    project.run("git", "reset", "-q", "--hard")
    project.dvc("checkout", "-q", "--force")


def out_md5(project: Project, stage: str, path: str) -> str:
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())
    return next(out["md5"] for out in lock["stages"][stage]["outs"] if out["path"] == path)


def test_teammate_gets_trained_models_without_training(alice, s3, tmp_path):
    # Alice tries a variant she does not commit (a smaller vocabulary), then pushes the committed pipeline's
    # outputs and, with --run-cache, the records of every run (the variant's included).
    alice.set_params(**{"tokenize.num_words": 50})
    assert alice.repro("tokenize") == {"tokenize"}
    reset(alice)
    alice.dvc("push", "--run-cache")  # the committed pipeline's outputs

    # Bob keeps his credentials in the git-ignored .dvc/config.local instead of the environment.
    bob = clone(alice.path, tmp_path / "bob", without_credentials(alice.env))
    connect(bob, s3)
    bob.dvc("remote", "modify", "--local", REMOTE, "access_key_id", ENV["AWS_ACCESS_KEY_ID"])
    bob.dvc("remote", "modify", "--local", REMOTE, "secret_access_key", ENV["AWS_SECRET_ACCESS_KEY"])
    bob.dvc("pull", "--run-cache")
    assert bob.run("git", "status", "--porcelain").stdout == ""
    assert bob.repro() == set()
    for model in ("models/lstm/seed0.keras", "models/gru/seed0.keras"):
        assert (bob.path / model).read_bytes() == (alice.path / model).read_bytes()

    predicted = bob.run(*console_script("lstm-vs-gru-predict"), "--json", "the goalie stopped the puck in the playoffs")
    top = json.loads(predicted.stdout.strip().splitlines()[-1])["top"]
    assert top[0]["group"] in GROUPS and 0 < top[0]["probability"] <= 1

    # The run records arrived, but DVC pushes only the cached outputs they name, not the uncached metric
    # file every stage here writes: a variant cannot be restored from them, so it runs (README: variants
    # travel as experiments, `dvc exp push`, tested below).
    assert runs(bob) == runs(alice) and len(runs(alice)) >= 3
    bob.set_params(**{"tokenize.num_words": 50})
    assert bob.repro("--pull", "tokenize") == {"tokenize"}


def test_pull_refuses_a_damaged_object(alice, s3, tmp_path):
    alice.dvc("push")
    md5 = out_md5(alice, "train_lstm@0", "models/lstm/seed0.keras")
    key = f"cache/files/md5/{md5[:2]}/{md5[2:]}"  # DVC 3's layout
    client = s3.client()
    good = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.md5(good).hexdigest() == md5
    client.put_object(Bucket=BUCKET, Key=key, Body=DAMAGED)
    try:
        # With `verify = true` (the committed config) DVC hashes what it downloads: the pull fails and
        # names the file, the damaged object is not kept, and the rest of the data arrives.
        bob = clone(alice.path, tmp_path / "bob", alice.env)
        connect(bob, s3)
        pulled = bob.dvc("pull", check=False)
        assert pulled.returncode != 0
        assert "models/lstm/seed0.keras" in pulled.stdout + pulled.stderr
        assert not (bob.path / "models/lstm/seed0.keras").exists()
        assert not (bob.path / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).exists()
        assert (bob.path / "models/gru/seed0.keras").read_bytes() == (alice.path / "models/gru/seed0.keras").read_bytes()
        assert "not in cache" in bob.dvc("status").stdout

        # DVC's default (`verify = false`) trusts the remote: the damaged bytes become the model, and
        # `dvc status` calls the workspace up to date. This is why the committed config turns it on.
        carol = clone(alice.path, tmp_path / "carol", alice.env)
        connect(carol, s3)
        carol.dvc("remote", "modify", "--local", REMOTE, "verify", "false")
        carol.dvc("pull")
        assert (carol.path / "models/lstm/seed0.keras").read_bytes() == DAMAGED
        assert "up to date" in carol.dvc("status").stdout
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=good)


def test_push_completes_after_the_server_stopped_mid_push(alice, tmp_path):
    flaky = S3Server()
    flaky.start()
    try:
        flaky.client().create_bucket(Bucket="flaky")
        alice.dvc("remote", "add", "--local", "flaky", "s3://flaky/cache")
        connect(alice, flaky, "flaky")

        flaky.crash_after = 4
        interrupted = alice.dvc("push", "-r", "flaky", "--run-cache", check=False)
        flaky.wait_stopped()
        assert interrupted.returncode != 0, interrupted.stdout
        flaky.crash_after = None
        flaky.start()  # the same port, the same buckets
        landed = flaky.objects("flaky")
        assert len(landed) == 4
        assert "new:" in alice.dvc("status", "-c", "-r", "flaky").stdout  # DVC knows what is missing

        alice.dvc("push", "-r", "flaky", "--run-cache")
        after = flaky.objects("flaky")
        assert landed.items() <= after.items() and len(after) > len(landed)
        assert "in sync" in alice.dvc("status", "-c", "-r", "flaky").stdout

        # Nothing lost: a fresh clone gets every output from this remote, hashes checked.
        bob = clone(alice.path, tmp_path / "bob", alice.env)
        bob.dvc("remote", "add", "--local", "flaky", "s3://flaky/cache")
        connect(bob, flaky, "flaky")
        bob.dvc("remote", "modify", "--local", "flaky", "verify", "true")
        bob.dvc("pull", "-r", "flaky")
        assert "up to date" in bob.dvc("status").stdout
        assert bob.repro() == set()
    finally:
        alice.dvc("remote", "remove", "--local", "flaky", check=False)
        flaky.stop()


@pytest.fixture(scope="module")
def sweep(trained) -> Iterator[list[str]]:
    """Two experiments queued (`model.units` 8 and 12, up to train_lstm) and run by two workers."""
    names = queue(trained, "model.units=8,12", targets=("train_lstm",))
    assert len(names) == 2
    try:
        run_queue(trained, jobs=2, expected=2, timeout=300)
        yield names
    finally:
        end_workers(trained)


def test_queued_sweep_shows_both_experiments(trained, sweep):
    shown = experiments(trained)
    assert set(sweep) <= set(shown)
    units = {shown[name]["params"]["params.yaml"]["data"]["model"]["units"]: name for name in sweep}
    assert set(units) == {8, 12}
    sizes = {u: metric(shown[name], "metrics/lstm/seed0.json", "params") for u, name in units.items()}
    assert sizes[8] < sizes[12]
    assert "Success" in trained.dvc("queue", "status").stdout

    diff = json.loads(trained.dvc("metrics", "diff", "HEAD", units[12], "--json").stdout)
    assert diff["metrics/lstm/seed0.json"]["params"]["new"] == sizes[12]


def test_experiment_travels_through_git_and_the_remote(alice, s3, sweep, tmp_path):
    origin = tmp_path / "origin.git"
    alice.run("git", "init", "-q", "--bare", "-b", "main", str(origin))
    alice.run("git", "push", "-q", str(origin), "main")
    name = sweep[0]
    alice.dvc("exp", "push", str(origin), name)  # the experiment's commit to git, its outputs to S3

    bob = clone(origin, tmp_path / "bob", alice.env)
    connect(bob, s3)
    assert name not in experiments(bob)
    bob.dvc("exp", "pull", "origin", name)
    pushed, pulled = experiments(alice)[name], experiments(bob)[name]
    assert pulled["metrics"] == pushed["metrics"] and pulled["params"] == pushed["params"]

    bob.dvc("exp", "apply", name)
    assert bob.json("metrics/lstm/seed0.json") == pushed["metrics"]["metrics/lstm/seed0.json"]["data"]
    assert bob.repro("train_lstm@0") == set()  # the experiment's model came from S3: nothing to train
