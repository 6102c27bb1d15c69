"""Start and stop the lab's scheduler: `prefect server start` on localhost plus served deployments.

    python -m flows.scheduler start [--config flows/schedule.yaml]   # both, in the background
    python -m flows.scheduler status
    python -m flows.scheduler stop
    python -m flows.scheduler serve                                  # the deployments, foreground

Schedules need a persistent server (the temporary per-process one cannot run them), so `start`
launches `prefect server start` (SQLite in PREFECT_HOME), waits for `prefect server status --wait`,
then launches `serve`, which registers every deployment of the config with its cron (or interval)
schedule and runs their flow runs as they come due. Both pids are kept in PREFECT_HOME (the
server's in Prefect's own `server.pid`) and everything we start carries a marker in its
environment, so `stop` ends exactly our processes (flow runs included) and nothing else. Why not
Prefect's `--background` and `stop`: see "processes" below.

Whoever reaches the API can create flow runs, and loopback is no user boundary on a shared
machine, so the server requires HTTP basic auth with a secret kept in PREFECT_HOME (`auth_string`),
and a served deployment takes no run parameters: its workspace, targets and flags are bound from
the config (the workspace's dvc.yaml is the code a run executes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from stages.common.errors import StageError
from stages.common.params import from_mapping, load_yaml

if TYPE_CHECKING:
    from prefect import Flow

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "flows" / "schedule.yaml"
STOP_GRACE_S = 20.0
MARKER = "MMPIPE_SCHEDULER_HOME"  # inherited by everything we start, and only by that
AUTH_ENV = "PREFECT_API_AUTH_STRING"  # the client's basic-auth 'user:password' (Prefect's name)


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


def auth_string(config: Config) -> str:
    """The API's basic-auth 'user:password': the user's PREFECT_API_AUTH_STRING, else the file
    PREFECT_HOME/auth_string (made on first use: random, owner-only; delete it to rotate)."""
    if given := os.environ.get(AUTH_ENV):
        return given
    path = config.home / "auth_string"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise StageError(path, "readable by other users: chmod 600 it, or delete it") from None
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(f"scheduler:{secrets.token_urlsafe(32)}\n")
    return path.read_text().strip()


def environment(config: Config, auth: str | None = None) -> dict[str, str]:
    """The environment of all we start: one PREFECT_HOME, one API, localhost by default; with
    `auth`, the server requires it and our clients send it."""
    s = config.server
    secret = {"PREFECT_SERVER_API_AUTH_STRING": auth, AUTH_ENV: auth} if auth else {}
    return {
        **os.environ,
        "PREFECT_HOME": str(config.home),
        "PREFECT_API_URL": config.api_url,
        "PREFECT_SERVER_API_HOST": s.host,
        "PREFECT_SERVER_API_PORT": str(s.port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        MARKER: str(config.home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **secret,
    }


# --- processes ---------------------------------------------------------------------------------
# prefect 3.8.8's own `prefect server ...` commands, and what we take from them:
# - `status --wait --timeout N` polls the API's health check: we wait with it (watching the server
#   process meanwhile, which it does not: a dead server would cost the whole timeout), and `status`
#   reports its answer. `start` refuses a host:port it cannot bind, so we need no port check.
# - `start --background` is not used: it leaves uvicorn's stdout and stderr on pipes nobody reads
#   once the CLI exits (the server's log, and why it died, are lost), its server.pid outlives a
#   crash and blocks the next start, and the server stays in the caller's process group. We run
#   `prefect server start` in the foreground like `serve`, logging to PREFECT_HOME/server.log, and
#   write server.pid only once it is up (Prefect's start reads one as its own background server).
# - `stop` is not used: it SIGTERMs the pid in server.pid even if another process has it by now,
#   returns before the server has exited, and knows nothing of `serve` and its flow runs.


def pid_file(config: Config, name: str) -> Path:
    return config.home / f"{name}.pid"


def ours(config: Config, pid: int) -> bool:
    """Whether `pid` is a live process we started (or a child of one): it carries our marker."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()  # fails for zombies too
    except OSError:
        return False
    return f"{MARKER}={config.home}".encode() in environ.split(b"\0")


def running(config: Config, name: str) -> int | None:
    """The pid of our `name` process if it is still the one we started (pids get recycled)."""
    try:
        pid = int(pid_file(config, name).read_text())
    except (OSError, ValueError):
        return None
    return pid if ours(config, pid) else None


def all_ours(config: Config) -> list[int]:
    """Every live process we started and its descendants, flow runs in their own session too."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [pid for pid in pids if pid != os.getpid() and ours(config, pid)]


def launch(config: Config, name: str, args: list[str], auth: str) -> subprocess.Popen:
    log = open(config.home / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it open)
    process = subprocess.Popen(
        args, cwd=REPO, env=environment(config, auth), stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,  # out of the caller's terminal signals
    )  # fmt: skip
    log.close()
    return process


def end(config: Config, pids: list[int]) -> None:
    """SIGTERM `pids`; SIGKILL those still alive after STOP_GRACE_S."""
    for sig, grace_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while (pids := [p for p in pids if ours(config, p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not pids:
            return


def wait_until(
    check: Callable[[], bool], what: str, config: Config, name: str, process: subprocess.Popen
) -> None:
    """Poll `check` each second; fail at once if `process` (our `name`) dies meanwhile."""
    log = config.home / f"{name}.log"
    deadline = time.monotonic() + config.server.start_timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if process.poll() is not None:
            tail = " ".join(log.read_text(errors="replace").split()[-40:])
            raise StageError(log, f"{name} exited while {what}; its log ends: ...{tail}")
        time.sleep(1.0)
    raise StageError(log, f"timed out after {config.server.start_timeout_s:.0f} s {what}")


def prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


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
    if all_ours(config):
        raise StageError(config.home, "the scheduler is already running (stop it first)")
    for name in ("server", "serve"):  # stale ones: Prefect takes a server.pid for its own
        pid_file(config, name).unlink(missing_ok=True)
    s, started, auth = config.server, time.monotonic(), auth_string(config)
    args = prefect("server", "start", "--host", s.host, "--port", str(s.port))
    server = launch(config, "server", args, auth)
    try:
        wait_healthy(config, server)
        print(f"server up in {time.monotonic() - started:.1f} s: {config.api_url[:-4]}")
        args = [sys.executable, "-m", "flows.scheduler", "serve", "--config", str(config.file)]
        serve = launch(config, "serve", args, auth)
        wait_until(lambda: deployments_ready(config, auth),
                   "registering the deployments", config, "serve", serve)  # fmt: skip
    except BaseException:
        stop(config)  # finds them by their marker
        raise
    for name, process in (("server", server), ("serve", serve)):  # only now (see above)
        pid_file(config, name).write_text(f"{process.pid}\n")
    for d in config.deployments:
        when = f"cron '{d.cron}' {d.timezone}" if d.cron else f"every {d.interval:g} s"
        print(f"deployment {d.flow}/{d.name}: {when}")
    stop_cmd = "python -m flows.scheduler stop"
    if config.file != CONFIG:
        stop_cmd += f" --config {config.file}"
    print(f"logs and database in {config.home}; stop with: {stop_cmd}")


def wait_healthy(config: Config, server: subprocess.Popen) -> None:
    """`prefect server status --wait` while we watch the server process, which it does not."""
    timeout = str(int(config.server.start_timeout_s))
    args = prefect("server", "status", "--wait", "--timeout", timeout)
    with subprocess.Popen(args, env=environment(config), stdout=subprocess.DEVNULL) as health:
        try:
            done = lambda: health.poll() is not None  # noqa: E731
            wait_until(done, "waiting for the server's health check", config, "server", server)
        finally:
            health.kill()
    if health.returncode != 0:
        raise StageError(
            config.home / "server.log", f"no answer to its health check in {timeout} s"
        )


def deployments_ready(config: Config, auth: str) -> bool:
    request = urllib.request.Request(
        f"{config.api_url}/deployments/filter", data=b"{}", method="POST",
        headers={"Content-Type": "application/json", "Authorization": basic_auth(auth)},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            names = {d["name"] for d in json.loads(response.read())}
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return {d.name for d in config.deployments} <= names


def basic_auth(auth: str) -> str:
    return "Basic " + base64.b64encode(auth.encode()).decode()


def stop(config: Config) -> None:
    """`serve` and its flow runs first (no new runs), then the server, then anything left."""
    server = running(config, "server")
    batches = {
        "serve and its flow runs": lambda: [p for p in all_ours(config) if p != server],
        "server": lambda: [server] if server else [],
        "leftover processes": lambda: all_ours(config),
    }
    for what, find in batches.items():
        if pids := find():
            end(config, pids)
            print(f"stopped {what}: {' '.join(map(str, pids))}")
    for name in ("serve", "server"):
        pid_file(config, name).unlink(missing_ok=True)


def status(config: Config) -> bool:
    up = {n: running(config, n) for n in ("server", "serve")}
    for name, pid in up.items():
        print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
    api = subprocess.run(prefect("server", "status"), env=environment(config),
                         capture_output=True, text=True)  # fmt: skip
    print((api.stdout + api.stderr).strip())
    return all(up.values()) and api.returncode == 0


def bound_flow(config: Config, d: Deployment) -> Flow:
    """`d`'s flow with no parameters: its workspace, targets and flags are fixed from the config.

    Whoever can create a flow run could otherwise choose the workspace (whose dvc.yaml is the code
    that runs), targets (another project's dvc.yaml, a dvc option) or `commit`. A run given any
    parameter fails before the flow starts: Prefect refuses parameters the function lacks.
    """
    from prefect import Flow

    from flows.reproduce import reproduce
    from flows.retrain import retrain

    run = {"reproduce": reproduce, "retrain": retrain}[d.flow]
    settings = {
        "workspace": str((config.root / d.workspace).resolve()),
        "targets": list(d.targets),
        "force": d.force,
    }
    if d.flow == "retrain":
        settings["commit"] = d.commit

    def scheduled() -> dict:
        return run.fn(**settings)

    description = f"{run.description} Bound by {config.file}: {json.dumps(settings)}"
    return Flow(scheduled, name=run.name, description=description)


def serve(config: Config) -> None:
    """Register the deployments and run their scheduled flow runs (blocks until stopped).

    Each flow is added to the runner as an object (`add_flow`, as `Flow.serve` does), so its runs
    execute the bound closure; `prefect.serve` would re-import it from its entrypoint instead.
    """
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner
    from prefect.schedules import Cron, Interval

    runner = Runner(name="scheduler")
    for d in config.deployments:
        schedule = Cron(d.cron, timezone=d.timezone) if d.cron else Interval(d.interval)
        runner.add_flow(bound_flow(config, d), name=d.name, schedules=[schedule])
        print(f"serving {d.flow}/{d.name}", flush=True)
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())


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
