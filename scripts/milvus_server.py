"""Run a real Milvus standalone server on loopback, from PyPI's ``milvus`` package.

The ``milvus`` package ("embedded Milvus", 2.3.x on linux x86_64) ships the Milvus
standalone binary, compressed, with embedded etcd and RocksMQ: no Docker, no other service.
Its launcher pins old helpers (pymilvus < 2.4 for its ``client`` extra), so it lives in a
virtual environment of its own (``scripts/milvus_server_setup.sh``) and this script runs with
that environment's Python, using nothing but the standard library and the package.

It writes the server's config into ``--data`` (ports chosen free, etcd's too, so two servers can
run side by side) and then *becomes* the server (``exec``): the process started is the Milvus
process itself, so a test can ``kill -9`` it and start this script again on the same ``--data``
and ``--port`` to restart it with what it had stored. Logs go to ``DATA/logs``.

    .venv/milvus-server/bin/python scripts/milvus_server.py --data /tmp/m --port 19530
    curl http://127.0.0.1:HEALTH_PORT/healthz        # "OK" once it serves (DATA/ports.json)

`MilvusServer` starts, waits for, kills and stops one from any Python (the tests' fixture and
benchmarks/search.py use it; waiting for the proxy needs pymilvus, which songsight's own
environment has).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LAUNCHER = Path(__file__).resolve()


def _free_ports(n: int, taken: set[int]) -> list[int]:
    """``n`` ports free now, distinct from each other and from ``taken``. They are held open
    together while chosen: ports picked one at a time and released can repeat (a CI start once
    gave the proxy and the query coordinator the same one, and the proxy never answered)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in taken and port not in ports:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _bindable(port: int) -> bool:
    """Free to listen on, as Milvus (Go) listens: with SO_REUSEADDR, so a port whose last
    connections are in TIME_WAIT (a server just killed) counts as free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(data: Path, names: list[str], given: dict[str, int]) -> dict[str, int]:
    """Every listening port: the ones given, else those of the last start (a restart keeps its
    addresses; etcd's member record names its peer port), else new free ones."""
    record = data / "ports.json"
    old = json.loads(record.read_text()) if record.is_file() else {}
    ports = {name: int(given[name]) for name in names if given.get(name)}  # given ones first
    for name in names:
        kept = int(old.get(name) or 0)
        if name not in ports and kept and _bindable(kept) and kept not in ports.values():
            ports[name] = kept
    missing = [name for name in names if name not in ports]
    ports.update(zip(missing, _free_ports(len(missing), set(ports.values())), strict=True))
    ports = {name: ports[name] for name in names}
    record.write_text(json.dumps(ports, indent=1, sort_keys=True))
    return ports


def binaries(venv_prefix: Path) -> Path:
    """Decompress the package's binaries once into ``PREFIX/milvus-server/bin`` (the package
    skips files whose checksum it has already seen); returns that folder."""
    import milvus

    base = venv_prefix / "milvus-server"
    milvus._initialize_data_files(str(base))
    return base / "bin"


def write_config(data: Path, ports: dict[str, int], settings: dict[str, str] | None = None) -> Path:
    """``DATA/configs/milvus.yaml`` from the package's template, every port set, and an
    embedded-etcd config of its own (etcd's URLs are otherwise fixed at 2379/2380).
    ``settings``: dotted keys of the template (``dataCoord.segment.maxSize``) and the values
    written in their place; a key the template lacks is refused."""
    import milvus

    config = milvus.MilvusServerConfig(data_dir=str(data))
    # Not the package's resolve(): its bind check (no SO_REUSEADDR) refuses a port a server
    # killed a moment ago still holds in TIME_WAIT, and a restart must keep its ports.
    config.resolve_storage()
    for name, value in ports.items():
        if name in config.configurable_items:
            config.configurable_items[name][1] = value
    for key, value in (settings or {}).items():
        config.set(key, value)  # not a templated item: replaced where the YAML holds it
    config.write_config()
    path = data / "configs" / "milvus.yaml"
    etcd = data / "configs" / "embed_etcd.yaml"
    client = f"http://127.0.0.1:{ports['etcd_port']}"
    peer = f"http://127.0.0.1:{ports['etcd_peer_port']}"
    etcd.write_text(
        f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\n"
    )
    text = path.read_text()
    for key, value in (settings or {}).items():
        if not _yaml_holds(text, key, value):
            raise SystemExit(f"Milvus's config has no {key!r} to set (a key of milvus.yaml, dotted)")  # fmt: skip
    text = text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd}\n", 1)
    path.write_text(text)
    return path


def _yaml_holds(text: str, key: str, value: str) -> bool:
    """Whether the written YAML sets dotted ``key`` to ``value`` (the package's writer skips a
    key it cannot find without a word)."""
    stack: list[str] = []
    for line in text.splitlines():
        body = line.split("#", 1)[0].rstrip()
        if not body.strip() or ":" not in body:
            continue
        name, _, rest = body.partition(":")
        level = (len(name) - len(name.lstrip(" "))) // 2
        stack = [*stack[:level], name.strip()]
        if ".".join(stack) == key and rest.strip() == str(value):
            return True
    return False


def installed_version(venv: Path) -> str | None:
    """The ``milvus`` package version in ``venv`` (None: not installed there)."""
    found = sorted((Path(venv) / "lib").glob("python3*/site-packages/milvus-*.dist-info"))
    return found[-1].name.removeprefix("milvus-").removesuffix(".dist-info") if found else None


class MilvusServer:
    """One Milvus standalone server run from the ``milvus`` package in ``venv``: ``data`` its
    folder, ``port`` its gRPC port (0: a free one, kept across restarts, so a gallery that
    recorded ``uri`` finds it again), ``settings`` milvus.yaml keys (dotted) and their values.
    The process is the server itself (`pid`)."""

    def __init__(self, venv: Path, data: Path, port: int = 0, settings: dict | None = None):
        self.venv, self.data = Path(venv), Path(data)
        self.settings = {str(k): str(v) for k, v in (settings or {}).items()}
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
        args += [f"--set={k}={v}" for k, v in self.settings.items()]
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the server's folder (config, data, logs)")
    p.add_argument("--port", type=int, default=0, help="gRPC port clients connect to (0: free)")
    p.add_argument("--health-port", type=int, default=0, help="/healthz port (0: free)")
    p.add_argument("--print-ports", action="store_true", help="print ports.json and exit")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a milvus.yaml setting, dotted (dataCoord.segment.maxSize=2048); repeatable",
    )  # fmt: skip
    args = p.parse_args(argv)
    if any("=" not in item for item in args.set):
        p.error("--set takes KEY=VALUE, e.g. --set dataCoord.segment.maxSize=4096")
    settings = dict(item.split("=", 1) for item in args.set)
    import milvus

    data = Path(args.data).absolute()
    data.mkdir(parents=True, exist_ok=True)
    template = milvus.MilvusServerConfig()
    names = [k for k in template.configurable_items if k.endswith("_port")]
    names += ["etcd_peer_port", "health_port"]
    ports = _ports(data, names, {"proxy_port": args.port, "health_port": args.health_port})
    if args.print_ports:
        print(json.dumps(ports))
        return
    write_config(data, ports, settings)
    bin_dir = binaries(Path(sys.prefix))
    env = dict(os.environ)
    env.update(
        DEPLOY_MODE="STANDALONE",
        METRICS_PORT=str(ports["health_port"]),
        MILVUS_RUN_DIR=str(data / "run"),
        LD_LIBRARY_PATH=":".join(filter(None, [str(bin_dir), env.get("LD_LIBRARY_PATH")])),
    )
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    # The server reads configs/milvus.yaml below its working directory.
    os.chdir(data)
    for fd, name in ((1, "milvus-stdout.log"), (2, "milvus-stderr.log")):
        log = os.open(logs / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, fd)
        os.close(log)
    exe = str(bin_dir / "milvus")
    os.execve(exe, [exe, "run", "standalone"], env)


if __name__ == "__main__":
    main()
