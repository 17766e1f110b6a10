"""A real Milvus server on loopback for the tests: PyPI's ``milvus`` package, run through
``scripts/milvus_server.py`` from a virtual environment of its own.

``scripts/milvus_server_setup.sh`` installs it (``.ci/run`` does, on every landing) into
``.venv/milvus-server``; ``SONGSIGHT_MILVUS_SERVER_VENV`` names another one. Where it is not
installed the server tests skip and say how to install it; a server that is installed but
does not start fails them. The process started is the Milvus binary itself, so `kill` is a
real ``kill -9`` of the server and `start` on the same folder restarts it with its data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "scripts" / "milvus_server.py"
DEFAULT_VENV = REPO / ".venv" / "milvus-server"
# Older servers installed beside the default one by .ci/run (the version test's other end).
OTHER_VENVS = sorted((REPO / ".venv").glob("milvus-server-*"))


def server_venv() -> Path:
    return Path(os.environ.get("SONGSIGHT_MILVUS_SERVER_VENV") or DEFAULT_VENV)


def installed_version(venv: Path) -> str | None:
    """The ``milvus`` package version in ``venv`` (None: not installed there)."""
    found = sorted((venv / "lib").glob("python3*/site-packages/milvus-*.dist-info"))
    return found[-1].name.removeprefix("milvus-").removesuffix(".dist-info") if found else None


def skip_reason(venv: Path) -> str | None:
    if installed_version(venv) is None:
        return (
            f"no Milvus server package in {venv}: install it with "
            "`bash scripts/milvus_server_setup.sh` (PyPI's `milvus`, ~60 MB; .ci/run does)"
        )
    return None


class MilvusServer:
    """One Milvus standalone server: ``data`` its folder, ``port`` its gRPC port (kept across
    restarts, so a gallery that recorded ``uri`` finds it again)."""

    def __init__(self, venv: Path, data: Path, port: int = 0):
        self.venv, self.data = Path(venv), Path(data)
        self.version = installed_version(self.venv)
        self.proc: subprocess.Popen | None = None
        self.port = port
        self.health_port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 240.0) -> MilvusServer:
        """Start (or restart on the same folder), and wait until a client can list collections."""
        python = self.venv / "bin" / "python"
        args = [str(python), str(LAUNCHER), "--data", str(self.data), "--port", str(self.port)]
        self.data.mkdir(parents=True, exist_ok=True)
        ports = json.loads(
            subprocess.run(
                [*args, "--print-ports"], capture_output=True, text=True, check=True
            ).stdout
        )
        self.port, self.health_port = ports["proxy_port"], ports["health_port"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self._wait(timeout_s)
        return self

    def _wait(self, timeout_s: float) -> None:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout_s
        error = "not started"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Milvus {self.version} exited ({self.proc.returncode}): {self.log_tail()}")  # fmt: skip
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:  # fmt: skip
                    healthy = b"OK" in r.read()
                if healthy:  # /healthz says OK before the proxy serves: ask it for real
                    client = MilvusClient(uri=self.uri, timeout=10)
                    client.list_collections()
                    client.close()
                    return
            except Exception as err:  # refused, reset or not ready yet: retry until the deadline
                error = str(err)
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"Milvus {self.version} not serving after {timeout_s:.0f} s: {error}; {self.log_tail()}")  # fmt: skip

    def log_tail(self, n_chars: int = 2000) -> str:
        logs = [self.data / "logs" / n for n in ("milvus-stderr.log", "milvus-stdout.log")]
        return " | ".join(p.read_text(errors="replace")[-n_chars:] for p in logs if p.is_file())

    def kill(self) -> None:
        """``kill -9``: no shutdown, whatever was in flight is lost to the server's recovery."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s (its graceful stop can take a minute)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def start_server(tmp_path_factory, venv: Path, name: str) -> MilvusServer:
    reason = skip_reason(venv)
    if reason:
        pytest.skip(reason)
    return MilvusServer(venv, tmp_path_factory.mktemp(name)).start()


class ExternalServer:
    """A server this run did not start (``SONGSIGHT_MILVUS_URI``): used, never stopped."""

    version = None

    def __init__(self, uri: str):
        self.uri = uri


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A Milvus server for the whole session (the crash drill kills and restarts it), or the
    one ``SONGSIGHT_MILVUS_URI`` names."""
    if os.environ.get("SONGSIGHT_MILVUS_URI"):
        yield ExternalServer(os.environ["SONGSIGHT_MILVUS_URI"])
        return
    server = start_server(tmp_path_factory, server_venv(), "milvus-server")
    yield server
    server.stop()
