"""A real Milvus server on loopback for the tests: PyPI's ``milvus`` package, run through
``scripts/milvus_server.py`` (`MilvusServer`) from a virtual environment of its own.

``scripts/milvus_server_setup.sh`` installs it (``.ci/run`` does, on every landing) into
``.venv/milvus-server``; ``SONGSIGHT_MILVUS_SERVER_VENV`` names another one. Where it is not
installed the server tests skip and say how to install it; a server that is installed but
does not start fails them. The process started is the Milvus binary itself, so `kill` is a
real ``kill -9`` of the server and `start` on the same folder restarts it with its data.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _launcher():
    """scripts/milvus_server.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("milvus_server_launcher", REPO / "scripts" / "milvus_server.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LAUNCHER = _launcher()
MilvusServer = _LAUNCHER.MilvusServer
installed_version = _LAUNCHER.installed_version
DEFAULT_VENV = REPO / ".venv" / "milvus-server"
# Older servers installed beside the default one by .ci/run (the version test's other end).
OTHER_VENVS = sorted((REPO / ".venv").glob("milvus-server-*"))


def server_venv() -> Path:
    return Path(os.environ.get("SONGSIGHT_MILVUS_SERVER_VENV") or DEFAULT_VENV)


def skip_reason(venv: Path) -> str | None:
    if installed_version(venv) is None:
        return (
            f"no Milvus server package in {venv}: install it with "
            "`bash scripts/milvus_server_setup.sh` (PyPI's `milvus`, ~60 MB; .ci/run does)"
        )
    return None


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
