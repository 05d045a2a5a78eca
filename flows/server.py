"""Prefect's temporary server for a command-line run, started as early as possible.

With no Prefect API configured, Prefect starts a temporary server (a uvicorn subprocess) on the
first API call and waits for it: ~10 s on 2 cores, during which this process mostly waits. The
training command line instead launches that same server right after its early checks, before
it imports Prefect, TensorFlow or scikit-learn, and points this process at it through
`PREFECT_API_URL`; the imports and the server's start-up then overlap. The flow waits for the
server to answer before its first API call (`start_temporary_server`).

The early launch only happens where a cheap look shows nothing else configures Prefect's API:
no `PREFECT_API_URL` or disabled temporary server in the environment or the active profile, and
no `.env`, `prefect.toml` or `[tool.prefect]` in the working directory (Prefect's other sources
of settings). Anywhere else, Prefect's own settings decide, after the imports, as Prefect would.

A Prefect server already running on this machine (`make server`, that is `prefect server start`,
at PREFECT_SERVER_API_HOST:PREFECT_SERVER_API_PORT, by default 127.0.0.1:4200) is used instead
when nothing else configures the API and its health check answers within half a second: runs
then appear in its UI and skip the temporary server's start-up.

Several command lines on one Prefect home take turns starting their servers: a first start
migrates a new database, and two migrations at once fail ("no such table"). A file lock in the
Prefect home is held from the launch until the server answers."""

from __future__ import annotations

import atexit
import fcntl
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
SERVER_START_LOCK = ".imbalance-server-start.lock"  # in PREFECT_HOME
SERVER_START_SECONDS = 90  # a first start migrates a new database: ~20 s on 2 cores
LOCAL_SERVER_PROBE_SECONDS = 0.5
_FALSE = ("0", "false", "no", "off")


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()


def _api_configured_elsewhere() -> bool:
    """Whether any source of Prefect settings this cheap look can see sets the API or turns
    the temporary server off (then Prefect's own settings decide, after the imports)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "true").lower() in _FALSE:
        return True
    cwd = Path.cwd()
    if (cwd / ".env").exists() or (cwd / "prefect.toml").exists():
        return True
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file() and "[tool.prefect" in pyproject.read_text(errors="replace"):
        return True
    try:
        profiles = tomllib.loads((prefect_home() / "profiles.toml").read_text())
    except FileNotFoundError:
        return False  # Prefect's built-in profile: the temporary server
    except (OSError, tomllib.TOMLDecodeError):
        return True
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    settings = profiles.get("profiles", {}).get(active, {})
    ephemeral = str(settings.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")).lower()
    return "PREFECT_API_URL" in settings or ephemeral in _FALSE


def _start_lock() -> IO[str]:
    """The Prefect home's start-up lock, taken (closing the file releases it)."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    lock = open(home / SERVER_START_LOCK, "a")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EarlyServer:
    """Prefect's temporary server, launched by this process before its heavy imports: the
    command Prefect runs for its own temporary server (uvicorn on Prefect's app factory), with
    the server's import cheaper (flows.temporary_server)."""

    def __init__(self) -> None:
        self.lock: IO[str] | None = _start_lock()  # released once the server answers
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent
        self.process: subprocess.Popen | None = subprocess.Popen(
            [
                *(sys.executable, "-m", "flows.temporary_server"),
                *("--app-dir", str(prefect_dir.parent)),
                *("--factory", "prefect.server.api.server:create_app"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--log-level", "error", "--lifespan", "on"),
            ],
            env=os.environ
            | {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}
            | {"PREFECT__SERVER_FINAL": "1"},
        )
        self.ready = False
        atexit.register(self.stop)

    def wait(self, timeout: float) -> None:
        """Block until the server answers its health check; fail naming why it did not."""
        deadline = time.monotonic() + timeout
        try:
            while not self.ready:
                code = self.process.poll() if self.process else -1
                if code is not None:
                    raise RuntimeError(
                        f"the temporary Prefect server on port {self.port} exited with code "
                        f"{code} before it answered"
                    )
                self.ready = _answers(self.url, timeout=1)
                if not self.ready:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the temporary Prefect server on port {self.port} did not answer "
                            f"within {timeout:.0f} s"
                        )
                    time.sleep(0.1)
            log.info("Prefect temporary server on %s", self.url.removesuffix("/api"))
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def stop(self) -> None:
        """Ask the server to stop, without waiting: it finishes its graceful shutdown once this
        process's open connections close, that is when this process exits (waiting here would
        wait for those connections: ~5 s at every exit)."""
        self._unlock()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        self.process = None


_EARLY: list[EarlyServer] = []
_TEMPORARY: list[bool] = []  # set when this process started a temporary server of Prefect's


def local_server_url() -> str:
    """Where `prefect server start` listens by default: Prefect's own host and port settings."""
    host = os.environ.get("PREFECT_SERVER_API_HOST", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{os.environ.get('PREFECT_SERVER_API_PORT', '4200')}/api"


def _answers(api_url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def use_running_server() -> bool:
    """Point this process at the Prefect server running on this machine, if nothing else
    configures the API and it answers within LOCAL_SERVER_PROBE_SECONDS. Call before Prefect
    is imported."""
    if "prefect" in sys.modules or _api_configured_elsewhere():
        return False
    url = local_server_url()
    if not _answers(url, LOCAL_SERVER_PROBE_SECONDS):
        return False
    os.environ["PREFECT_API_URL"] = url
    print(f"Using the Prefect server at {url.removesuffix('/api')}", file=sys.stderr)
    return True


def start_server_early() -> None:
    """Use the Prefect server running on this machine, or launch the temporary server now and
    point this process at it, unless Prefect's API is configured some other way. Call before
    Prefect is imported."""
    if "prefect" in sys.modules or _api_configured_elsewhere() or use_running_server():
        return
    server = EarlyServer()
    _EARLY.append(server)
    os.environ["PREFECT_API_URL"] = server.url


def lasting_server() -> bool:
    """Whether this process talks to a server that outlives it (so a link into its UI is worth
    printing): not a temporary server this process started."""
    from prefect.settings import PREFECT_API_URL

    return not _EARLY and not _TEMPORARY and bool(PREFECT_API_URL.value())


@contextmanager
def heartbeats_only_to_a_lasting_server() -> Iterator[None]:
    """Flow runs in this block send heartbeats only to a server that outlives this process.

    A flow run sends a heartbeat every few minutes from a thread that sleeps in one-second steps,
    and the flow waits for that thread when it ends: up to 1 s of every run (0.8 s in one
    profile of the default run). Heartbeats let a running server mark a run whose process died
    as crashed; a temporary server stops with the process that started it, so no one would
    read them."""
    if lasting_server():
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def start_temporary_server() -> None:
    """Make sure a Prefect API answers before the flow's first call: wait for the server
    launched early, or start Prefect's own temporary server now (one process at a time per
    Prefect home), or do nothing when an API is configured."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    timeout = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), SERVER_START_SECONDS)
    if _EARLY:
        _EARLY[0].wait(timeout)
        return
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    _TEMPORARY.append(True)
    with _start_lock():
        SubprocessASGIServer().start(timeout=timeout)  # the client reuses this instance


def wait_for_local_server(timeout: float = SERVER_START_SECONDS) -> int:
    """`python -m flows.server`: wait until the local server answers (`make server` calls it
    after `prefect server start --background`); exit 1 if it does not within `timeout`."""
    url = local_server_url()
    deadline = time.monotonic() + timeout
    while not _answers(url, timeout=1):
        if time.monotonic() > deadline:
            print(f"the Prefect server at {url} did not answer within {timeout:.0f} s")
            return 1
        time.sleep(0.5)
    print(f"Prefect UI: {url.removesuffix('/api')}  (stop it with: make server-stop)")
    return 0


if __name__ == "__main__":
    sys.exit(wait_for_local_server())
