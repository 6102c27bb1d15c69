"""The scheduler: its config, and one end-to-end run of `prefect server start` and served flows
(a reproduction, and a retraining after a params change that commits and flags a regression)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flows import dvc_cli, scheduler
from flows.reproduce import slug
from stages.common.errors import StageError
from tests.dvc_toy import ROOT, build_toy, dvc

CONFIG = """\
server:
  host: 127.0.0.1
  port: {port}
  home: {home}
  start_timeout_s: 240
deployments:
  - flow: reproduce
    name: every-few-seconds
    interval: 30
    workspace: {workspace}
  - flow: retrain
    name: retrain-every-few-seconds
    interval: 30
    workspace: {retrained}
    targets: [evaluate, report]
    commit: true
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_repo_config_is_valid_and_localhost_only() -> None:
    config = scheduler.load_config(scheduler.CONFIG)
    assert config.server.host == "127.0.0.1"
    assert {d.flow for d in config.deployments} == {"reproduce", "retrain"}
    assert all(d.cron and d.interval is None for d in config.deployments)
    env = scheduler.environment(config)
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{config.server.port}/api"
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert env["PREFECT_HOME"] == str(ROOT / ".prefect")


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ("- {flow: reproduce, name: x}", "deployments[0]"),  # neither cron nor interval
        ("- {flow: reproduce, name: x, cron: '0 2 * * *', interval: 5}", "deployments[0]"),
        ("- {flow: reproduce, name: x, interval: 5, commit: true}", "deployments[0].commit"),
        ("- {flow: train, name: x, interval: 5}", "deployments[0].flow"),
        ("- {flow: reproduce, name: x, interval: 5, tagets: [a]}", "deployments[0].tagets"),
    ],
)
def test_bad_config_names_the_entry(tmp_path: Path, entry: str, where: str) -> None:
    path = write(tmp_path / "s.yaml", f"server: {{}}\ndeployments:\n  {entry}\n")
    with pytest.raises(StageError) as err:
        scheduler.load_config(path)
    assert err.value.where.startswith(f"{path}: {where}")


def test_the_api_secret_is_random_owner_only_kept_or_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(scheduler.AUTH_ENV, raising=False)
    configs = []
    for name in ("a", "b"):
        text = CONFIG.format(
            port=4200, home=tmp_path / name, workspace=tmp_path, retrained=tmp_path
        )
        configs.append(scheduler.load_config(write(tmp_path / f"{name}.yaml", text)))
        configs[-1].home.mkdir()
    first = scheduler.auth_string(configs[0])
    path = configs[0].home / "auth_string"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.startswith("scheduler:") and len(first) > 40
    assert scheduler.auth_string(configs[0]) == first  # kept: a restart keeps the UI's login
    assert scheduler.auth_string(configs[1]) != first
    path.chmod(0o644)
    with pytest.raises(StageError, match="readable by other users"):
        scheduler.auth_string(configs[0])
    monkeypatch.setenv(scheduler.AUTH_ENV, "me:mine")
    assert scheduler.auth_string(configs[0]) == "me:mine"
    env = scheduler.environment(configs[0], "me:mine")
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == env[scheduler.AUTH_ENV] == "me:mine"


def test_served_flows_take_no_parameters(tmp_path: Path) -> None:
    from prefect.exceptions import SignatureMismatchError

    config = scheduler.load_config(scheduler.CONFIG)
    for d in config.deployments:
        flow = scheduler.bound_flow(config, d)
        assert flow.name == d.flow
        assert flow.parameters.properties == {}
        with pytest.raises(SignatureMismatchError):
            flow.validate_parameters({"workspace": str(tmp_path)})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(port: int, route: str, body: dict, auth: str | None, attempts: int = 30) -> Any:
    """POST `body` to the server's API, with basic auth `auth` (None: unauthenticated).

    A 503 is asked again, a second apart, up to `attempts` times: Prefect's answer while its
    SQLite database is busy with its own services, which a loaded machine makes likely (seen once
    in CI, on create_flow_run)."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = scheduler.basic_auth(auth)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/{route}",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == attempts:
                raise
        time.sleep(1)


def api(port: int, route: str, body: dict, auth: str) -> list[dict]:
    """POST a filter to the server; an empty answer while a busy server is slow to reply."""
    try:
        return post(port, route, body, auth)
    except OSError:  # URLError and timeouts; the loop asks again until its deadline
        return []


def our_processes(home: Path) -> list[int]:
    marker = f"{scheduler.MARKER}={home.resolve()}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def listening_addresses(pids: list[int]) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the TCP sockets `pids` listen on."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(fields[1].rsplit(":", 1)[0])
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1


@pytest.mark.slow
def test_served_reproduce_runs_on_schedule_and_stops_cleanly(tmp_path: Path) -> None:
    workspace = build_toy(tmp_path / "toy")
    (workspace / "raw/a.txt").write_text("changed\n")
    other = build_toy(tmp_path / "other", reproduce=False)  # a pipeline no deployment names
    retrained = build_toy(tmp_path / "retrained")
    params = retrained / "params.yaml"  # halves the watched nested.acc (5 x lr): a regression
    params.write_text(params.read_text().replace("lr: 0.1", "lr: 0.05"))
    home, port = tmp_path / "prefect", free_port()
    config = write(
        tmp_path / "s.yaml",
        CONFIG.format(port=port, home=home, workspace=workspace, retrained=retrained),
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != scheduler.AUTH_ENV},  # make a secret
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",  # schedule within seconds
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }

    def scheduler_cli(command: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "flows.scheduler", command, "--config", str(config)]
        return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    key = f"dvc-repro-{slug(workspace)}"
    try:
        started = scheduler_cli("start")
        assert started.returncode == 0, started.stderr
        state = scheduler_cli("status")
        assert state.returncode == 0, state.stdout
        assert "Server is available" in state.stdout  # prefect server status, on our API URL
        assert (home / "server.pid").read_text().strip() in state.stdout  # Prefect's pid file
        listening = listening_addresses(our_processes(home))
        assert listening and listening <= LOOPBACK, f"listening beyond localhost: {listening}"
        secret = home / "auth_string"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        auth = secret.read_text().strip()
        deployment, retraining = sorted(
            post(port, "deployments/filter", {}, auth), key=lambda d: d["name"]
        )
        assert (deployment["name"], retraining["name"]) == (
            "every-few-seconds", "retrain-every-few-seconds",
        )  # fmt: skip
        assert deployment["parameters"] == {}
        assert deployment["parameter_openapi_schema"]["properties"] == {}
        # The attack: a run of the served flow in another directory, forced.
        create = f"deployments/{deployment['id']}/create_flow_run"
        hostile = {"parameters": {"workspace": str(other), "targets": [], "force": True}}
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(port, create, hostile, None)
        assert refused.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(port, create, hostile, "scheduler:wrong")
        assert refused.value.code == 401
        # Even with the secret, the run ends before the flow starts: it takes no parameters.
        hostile_run = post(port, create, hostile, auth)["id"]
        deadline, runs, reproduced, completed, hostile_end, flagged = (
            time.monotonic() + 300,
            [],
            [],
            set(),
            [],
            [],
        )
        retrain_key = f"retrain-{slug(retrained)}"
        while time.monotonic() < deadline and not (reproduced and flagged and hostile_end):
            time.sleep(3)
            # not the scheduled ones: the scheduler books ~100 ahead per deployment, beyond the
            # API's default page of 200, which would then hide the runs that happened
            runs = api(port, "flow_runs/filter", {"flow_runs": {"state": {"type": {
                "any_": ["COMPLETED", "CRASHED", "FAILED", "RUNNING", "PENDING", "CANCELLED"]
            }}}}, auth)  # fmt: skip
            hostile_end = [
                r["state_type"] for r in runs if r["id"] == hostile_run and r["end_time"]
            ]
            completed = {
                r["id"] for r in runs if r["state_type"] == "COMPLETED" and r["auto_scheduled"]
            }
            found = api(port, "artifacts/filter", {"artifacts": {"key": {"any_": [key]}}}, auth)
            reproduced = [
                a
                for a in found
                if "stages re-run: prep, train, evaluate, report" in a["data"]
                and a["flow_run_id"] in completed
            ]
            found = api(
                port, "artifacts/filter", {"artifacts": {"key": {"any_": [retrain_key]}}}, auth
            )
            flagged = [
                a for a in found if "1 regression(s) flagged" in a["data"]
                and a["flow_run_id"] in completed
            ]  # fmt: skip
        assert completed, f"no scheduled run finished; states: {[r['state_type'] for r in runs]}"
        assert reproduced, "no scheduled run published the artifact of the reproduction"
        seen = [(a["flow_run_id"], a["data"][:60]) for a in found]
        assert flagged, f"no scheduled retraining flagged the regression; artifacts: {seen}"
        (artifact,) = flagged
        text = artifact["data"]
        assert "- train: changed deps: params.yaml:train.lr (modified)" in text
        assert re.search(r"\| train\.lr +\| 0\.1 +\| 0\.05 +\|", text)  # dvc params diff --md
        regression = "reports/train.json:nested.acc: 0.5 -> 0.25 (50.0% worse; higher is better)"
        assert f"**{regression}**" in text
        (run,) = [r for r in runs if r["id"] == artifact["flow_run_id"]]
        head = dvc_cli.git(retrained, "log", "-1", "--format=%B").output
        assert head.splitlines()[0] == (
            f"retrain: flow run {run['name']} ({run['id']}): 1 REGRESSION"
        )
        assert f"- {regression}" in head
        committed = dvc_cli.git(retrained, "show", "--name-only", "--format=", "HEAD").output
        assert {"dvc.lock", "params.yaml", "reports/train.json", "reports/index.html"} <= set(
            committed.split()
        )
        assert hostile_end == ["CRASHED"], f"the run given a workspace ended {hostile_end}"
        assert (  # the runner's engine, before the flow's code: the run took no parameters
            "SignatureMismatchError: Function expects parameters [] but was provided with "
            "parameters ['workspace', 'targets', 'force']"
        ) in (home / "serve.log").read_text()
    finally:
        stopped = scheduler_cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert our_processes(home) == []
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the server still listens"
    assert json.loads(dvc(workspace, "status", "--json") or "{}") == {}
    assert not (other / "data").exists() and not (other / "dvc.lock").exists()  # never ran there


@pytest.mark.slow
def test_start_on_a_taken_port_fails_fast_with_prefects_reason(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write(
            tmp_path / "s.yaml", CONFIG.format(port=port, home=home, workspace=ROOT, retrained=ROOT)
        )
        args = [sys.executable, "-m", "flows.scheduler", "start", "--config", str(config)]
        started = time.monotonic()
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "server exited while waiting" in done.stderr
    assert f"Port {port} is already in use" in done.stderr  # from `prefect server start`
    assert time.monotonic() - started < 120  # not the 240 s health-check timeout
    assert our_processes(home) == []
    assert not (home / "server.pid").exists()
