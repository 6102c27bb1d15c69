"""Start and stop the lab's scheduler: `prefect server start` on localhost plus served deployments.

    python -m flows.scheduler start [--config flows/schedule.yaml]   # both, in the background
    python -m flows.scheduler status
    python -m flows.scheduler stop
    python -m flows.scheduler serve                                  # the deployments, foreground

Schedules need a persistent server (the temporary per-process one cannot run them), so `start`
launches `prefect server start` (SQLite in PREFECT_HOME) and waits for its health check, then
launches `serve`, which registers every deployment of the config with its cron (or interval)
schedule and runs their flow runs as they come due. Each process leads its own process group and
its id is kept in PREFECT_HOME, so `stop` ends exactly those groups (the server's workers and any
running flow runs with them), and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stages.common.errors import StageError
from stages.common.params import from_mapping, load_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "flows" / "schedule.yaml"
PROCESSES = ("serve", "server")  # stop order: no new runs first, then the API they report to
STOP_GRACE_S = 20.0
MARKER = "MMPIPE_SCHEDULER_HOME"  # inherited by everything we start, and only by that


@dataclass(frozen=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 4200
    home: str = ".prefect"
    start_timeout_s: float = 180.0


@dataclass(frozen=True)
class Deployment:
    flow: Literal["reproduce", "retrain"]
    name: str
    cron: str | None = None
    interval: float | None = None
    timezone: str = "UTC"
    workspace: str = "."
    targets: tuple[str, ...] = ()
    force: bool = False
    commit: bool = False  # retrain only


@dataclass(frozen=True)
class Config:
    file: Path
    root: Path  # what relative paths in the file are relative to
    server: Server
    deployments: tuple[Deployment, ...]

    @property
    def home(self) -> Path:
        return (self.root / self.server.home).resolve()

    @property
    def api_url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}/api"


def load_config(path: Path, root: Path = REPO) -> Config:
    raw = load_yaml(path)
    unknown = sorted(set(raw) - {"server", "deployments"})
    if unknown:
        raise StageError(f"{path}: {unknown[0]}", "unknown key (known: deployments, server)")
    if not isinstance(raw.get("deployments"), list):
        raise StageError(f"{path}: deployments", "expected a list of deployments")
    server = from_mapping(Server, raw.get("server") or {}, f"{path}: server")
    deployments = []
    for i, item in enumerate(raw["deployments"]):
        where = f"{path}: deployments[{i}]"
        d = from_mapping(Deployment, item, where)
        if (d.cron is None) == (d.interval is None):
            raise StageError(where, "give exactly one of cron and interval")
        if d.commit and d.flow != "retrain":
            raise StageError(f"{where}.commit", "only the retrain flow commits")
        deployments.append(d)
    return Config(path.resolve(), root, server, tuple(deployments))


def environment(config: Config) -> dict[str, str]:
    """The environment of all we start: one PREFECT_HOME, one API, localhost by default."""
    s = config.server
    return {
        **os.environ,
        "PREFECT_HOME": str(config.home),
        "PREFECT_API_URL": config.api_url,
        "PREFECT_SERVER_API_HOST": s.host,
        "PREFECT_SERVER_API_PORT": str(s.port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        MARKER: str(config.home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


# --- process bookkeeping ---------------------------------------------------------------------


def pid_file(config: Config, name: str) -> Path:
    return config.home / f"{name}.pid"


def ours(config: Config, pid: int) -> bool:
    """Whether `pid` is a live process we started (or a child of one): it carries our marker."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER}={config.home}".encode() in environ.split(b"\0")


def running(config: Config, name: str) -> int | None:
    """The pid of our `name` process if it is still the one we started (pids get recycled)."""
    path = pid_file(config, name)
    if not path.exists():
        return None
    pid = int(path.read_text())
    return pid if ours(config, pid) else None


def stragglers(config: Config) -> list[int]:
    """Our processes outside the two groups, e.g. flow runs Prefect started in their own session."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [pid for pid in pids if pid != os.getpid() and ours(config, pid)]


def launch(config: Config, name: str, args: list[str]) -> int:
    log = open(config.home / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it open)
    process = subprocess.Popen(
        args,
        cwd=REPO,
        env=environment(config),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so `stop` can end all of it
    )
    log.close()
    pid_file(config, name).write_text(f"{process.pid}\n")
    return process.pid


def stop_group(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL it if it outlives the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            _reap(pid)
            time.sleep(0.2)


def _reap(pid: int) -> None:
    """Collect our own exited child, if it is one, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


def api_get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except (urllib.error.URLError, OSError):
        return None


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, config: Config, name: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if running(config, name) is None:
            raise StageError(config.home / f"{name}.log", f"{name} exited while {what}")
        time.sleep(1.0)
    raise StageError(config.home / f"{name}.log", f"timed out after {timeout_s:.0f} s {what}")


# --- commands --------------------------------------------------------------------------------


def check_sqlalchemy(config: Config) -> None:
    """Refuse to start a server whose scheduler would fail on every loop and never run anything.

    prefect 3.8.8's scheduler bulk-inserts flow runs with its `state` hybrid property, which
    SQLAlchemy 2.1 rejects ("Can't evaluate bulk DML statement"); SQLAlchemy 2.0.x works.
    """
    probe = "import sqlalchemy; print(sqlalchemy.__version__)"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=environment(config), capture_output=True, text=True
    )
    version = done.stdout.strip()
    if done.returncode == 0 and tuple(int(p) for p in version.split(".")[:2]) >= (2, 1):
        raise StageError(
            f"SQLAlchemy {version}",
            "prefect 3.8.8's scheduler cannot create scheduled runs with SQLAlchemy >= 2.1 "
            "(pin SQLAlchemy==2.0.44: pip install SQLAlchemy==2.0.44)",
        )


def start(config: Config) -> None:
    check_sqlalchemy(config)
    config.home.mkdir(parents=True, exist_ok=True)
    (config.home / ".gitignore").write_text("*\n")  # the database and logs stay out of Git
    if any(running(config, n) for n in PROCESSES):
        raise StageError(config.home, "the scheduler is already running (stop it first)")
    s = config.server
    if not port_free(s.host, s.port):
        raise StageError(f"{s.host}:{s.port}", "port already in use (set server.port)")
    started = time.monotonic()
    launch(config, "server", [sys.executable, "-m", "prefect", "server", "start",
                              "--host", s.host, "--port", str(s.port)])  # fmt: skip
    try:
        health = f"{config.api_url}/health"
        wait_until(lambda: api_get(health) is not None, s.start_timeout_s,
                   "waiting for the server's health check", config, "server")  # fmt: skip
        print(f"server up in {time.monotonic() - started:.1f} s: {config.api_url[:-4]}")
        launch(config, "serve", [sys.executable, "-m", "flows.scheduler", "serve",
                                 "--config", str(config.file)])  # fmt: skip
        wait_until(lambda: deployments_ready(config), s.start_timeout_s,
                   "registering the deployments", config, "serve")  # fmt: skip
    except BaseException:
        stop(config)
        raise
    for d in config.deployments:
        when = f"cron '{d.cron}' {d.timezone}" if d.cron else f"every {d.interval:g} s"
        print(f"deployment {d.flow}/{d.name}: {when}")
    stop_cmd = "python -m flows.scheduler stop"
    if config.file != CONFIG:
        stop_cmd += f" --config {config.file}"
    print(f"logs and database in {config.home}; stop with: {stop_cmd}")


def deployments_ready(config: Config) -> bool:
    request = urllib.request.Request(
        f"{config.api_url}/deployments/filter", data=b"{}", method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            names = {d["name"] for d in json.loads(response.read())}
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return {d.name for d in config.deployments} <= names


def stop(config: Config) -> None:
    for name in PROCESSES:
        pid = running(config, name)
        if pid is not None:
            stop_group(pid)
            print(f"stopped {name} (process group {pid})")
        pid_file(config, name).unlink(missing_ok=True)
    for pid in stragglers(config):
        _stop_one(pid)
        print(f"stopped leftover process {pid}")


def _stop_one(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        for _ in range(int(STOP_GRACE_S / 0.2)):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.2)


def status(config: Config) -> bool:
    up = {n: running(config, n) for n in PROCESSES}
    for name, pid in up.items():
        print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
    healthy = api_get(f"{config.api_url}/health") is not None
    print(f"api {config.api_url}: {'healthy' if healthy else 'not answering'}")
    return all(up.values()) and healthy


def serve(config: Config) -> None:
    """Register the deployments and run their scheduled flow runs (blocks until stopped)."""
    from prefect import serve as prefect_serve
    from prefect.schedules import Cron, Interval

    from flows.reproduce import reproduce
    from flows.retrain import retrain

    flows = {"reproduce": reproduce, "retrain": retrain}
    deployments = []
    for d in config.deployments:
        schedule = Cron(d.cron, timezone=d.timezone) if d.cron else Interval(d.interval)
        parameters = {
            "workspace": str((config.root / d.workspace).resolve()),
            "targets": list(d.targets),
            "force": d.force,
        }
        if d.flow == "retrain":
            parameters["commit"] = d.commit
        deployments.append(
            flows[d.flow].to_deployment(name=d.name, schedules=[schedule], parameters=parameters)
        )
    prefect_serve(*deployments)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m flows.scheduler", description=__doc__.split("\n")[0]
    )
    cli.add_argument("command", choices=["start", "stop", "status", "serve"])
    cli.add_argument(
        "--config", type=Path, default=CONFIG, help="schedule config (flows/schedule.yaml)"
    )
    args = cli.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "start":
            start(config)
        elif args.command == "stop":
            stop(config)
        elif args.command == "status":
            return 0 if status(config) else 1
        else:
            serve(config)
    except StageError as exc:
        print(f"scheduler: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
