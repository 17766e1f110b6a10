from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from songsight.data.download import (
    DEFAULT_URL,
    download_file,
    extract_tar,
    fetch_ssw60,
    format_ssw60_report,
    md5_file,
    verify_ssw60,
)
from songsight.data.ssw60 import SSW60
from songsight.errors import DataNotFoundError, InputFileError
from tests.ssw60_fixture import make_fake_ssw60, pack_tar_gz


class _Server:
    """A local HTTP server for one payload, with switches for the ways real servers misbehave."""

    def __init__(self, payload: bytes, *, ranges: bool = True, cut_first: list[int] | None = None):
        self.payload = payload
        self.ranges = ranges
        self.cut_first = list(cut_first or [])  # byte counts after which the next replies stop
        self.requests: list[str | None] = []  # Range header of each request (None: none)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                if self.path != "/ssw60.tar.gz":
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                server.requests.append(rng)
                data, start = server.payload, 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and server.ranges:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first:
                    body = body[: server.cut_first.pop(0)]
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ssw60.tar.gz"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def payload() -> bytes:
    # Incompressible, so sizes and cut points mean what they say.
    return hashlib.shake_256(b"songsight").digest(300_000)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


FAST = {"progress": False, "backoff_s": 0.0, "timeout_s": 10.0}


@pytest.mark.parametrize(
    ("size", "chunk_bytes"),
    [(0, 1024), (1, 1), (1023, 1), (1023, 1024), (1024, 1024), (1025, 1024), (5000, 1 << 20)],
)
def test_md5_file_matches_hashlib(tmp_path, size, chunk_bytes):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert md5_file(p, chunk_bytes=chunk_bytes) == hashlib.md5(data).hexdigest()


def test_default_url_is_the_official_one():
    assert DEFAULT_URL == "https://ml-inat-competition-datasets.s3.amazonaws.com/ssw60/ssw60.tar.gz"


def test_plain_download(tmp_path, payload):
    with _Server(payload) as srv:
        out = download_file(srv.url, tmp_path / "a.tar.gz", md5=_md5(payload), **FAST)
    assert out.read_bytes() == payload
    assert srv.requests == [None]
    assert not (tmp_path / "a.tar.gz.part").exists()


def test_interrupted_download_resumes_with_range(tmp_path, payload):
    with _Server(payload, cut_first=[100_000, 50_000]) as srv:
        out = download_file(srv.url, tmp_path / "a.tar.gz", md5=_md5(payload), **FAST)
    assert out.read_bytes() == payload
    assert srv.requests == [None, "bytes=100000-", "bytes=150000-"]


def test_resume_across_runs_from_part_file(tmp_path, payload):
    dest = tmp_path / "a.tar.gz"
    (tmp_path / "a.tar.gz.part").write_bytes(payload[:123_456])
    with _Server(payload) as srv:
        download_file(srv.url, dest, md5=_md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert srv.requests == ["bytes=123456-"]


def test_server_ignoring_range_restarts_from_zero(tmp_path, payload):
    dest = tmp_path / "a.tar.gz"
    # Garbage in the .part proves the bytes are not blindly appended to.
    (tmp_path / "a.tar.gz.part").write_bytes(b"\x00" * 1000)
    with _Server(payload, ranges=False, cut_first=[70_000]) as srv:
        download_file(srv.url, dest, md5=_md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert srv.requests == ["bytes=1000-", "bytes=70000-"]


def test_complete_part_file_is_finished_by_a_416(tmp_path, payload):
    dest = tmp_path / "a.tar.gz"
    (tmp_path / "a.tar.gz.part").write_bytes(payload)
    with _Server(payload) as srv:
        download_file(srv.url, dest, md5=_md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert srv.requests == [f"bytes={len(payload)}-"]


def test_oversized_part_file_restarts(tmp_path, payload):
    dest = tmp_path / "a.tar.gz"
    (tmp_path / "a.tar.gz.part").write_bytes(payload + b"junk")
    with _Server(payload) as srv:
        download_file(srv.url, dest, md5=_md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert srv.requests == [f"bytes={len(payload) + 4}-", None]


def test_wrong_md5_keeps_nothing_corrupt_as_final(tmp_path, payload):
    dest = tmp_path / "a.tar.gz"
    with _Server(payload) as srv, pytest.raises(InputFileError, match="does not match"):
        download_file(srv.url, dest, md5="0" * 32, **FAST)
    assert not dest.exists()
    assert not (tmp_path / "a.tar.gz.part").exists()
    assert (tmp_path / "a.tar.gz.md5-mismatch").read_bytes() == payload


def test_existing_final_file_is_checked_not_downloaded(tmp_path, payload):
    dest = tmp_path / "a.tar.gz"
    dest.write_bytes(payload)
    with _Server(payload) as srv:
        assert download_file(srv.url, dest, md5=_md5(payload), **FAST) == dest
        with pytest.raises(InputFileError, match="delete it and rerun"):
            download_file(srv.url, dest, md5="1" * 32, **FAST)
    assert srv.requests == []


def test_retries_run_out_and_keep_the_part(tmp_path, payload):
    dest = tmp_path / "a.tar.gz"
    with _Server(payload, cut_first=[1000] * 10) as srv:
        with pytest.raises(DataNotFoundError, match="after 2 retries.*rerun to resume"):
            download_file(srv.url, dest, md5=_md5(payload), retries=2, **FAST)
    assert len(srv.requests) == 3
    assert (tmp_path / "a.tar.gz.part").read_bytes() == payload[:3000]


def test_http_404_is_not_retried(tmp_path, payload):
    with _Server(payload) as srv:
        with pytest.raises(DataNotFoundError, match="HTTP 404"):
            download_file(srv.url.replace("ssw60.tar.gz", "nope"), tmp_path / "x", **FAST)


def _tar_with(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return archive


def test_link_then_path_through_it_is_refused(tmp_path):
    up = tarfile.TarInfo("ssw60/up")
    up.type, up.linkname = tarfile.SYMTYPE, ".."  # itself inside the destination
    sneaky = tarfile.TarInfo("ssw60/up/../escape.txt")  # lexically inside, physically not
    archive = _tar_with(tmp_path, [(up, b""), (sneaky, b"owned")])
    with pytest.raises(InputFileError, match="refusing member 'ssw60/up/../escape.txt'"):
        extract_tar(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(
    ("name", "kind", "linkname"),
    [
        ("../escape.txt", tarfile.REGTYPE, ""),
        ("ssw60/../../escape.txt", tarfile.REGTYPE, ""),
        ("/tmp/escape.txt", tarfile.REGTYPE, ""),
        ("ssw60/link", tarfile.SYMTYPE, "../../escape.txt"),
        ("ssw60/link", tarfile.SYMTYPE, "/etc/passwd"),
        ("ssw60/hard", tarfile.LNKTYPE, "../escape.txt"),
        ("ssw60/dev", tarfile.CHRTYPE, ""),
    ],
)
def test_unsafe_members_are_refused(tmp_path, name, kind, linkname):
    ok = tarfile.TarInfo("ssw60/taxa.csv")
    bad = tarfile.TarInfo(name)
    bad.type, bad.linkname = kind, linkname
    archive = _tar_with(tmp_path, [(ok, b"label\n"), (bad, b"owned")])
    dest = tmp_path / "out" / "inner"
    with pytest.raises(InputFileError, match="refusing member"):
        extract_tar(archive, dest, progress=False)
    assert not (tmp_path / "out" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    assert (dest / "ssw60" / "taxa.csv").read_bytes() == b"label\n"


def test_safe_archive_extracts_exactly(tmp_path):
    src = make_fake_ssw60(tmp_path / "src", n_species=2, clip_s=0.1)
    archive = pack_tar_gz(src, tmp_path / "ssw60.tar.gz")
    out = extract_tar(archive, tmp_path / "dest", progress=False)
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(out / "ssw60") for p in (out / "ssw60").rglob("*") if p.is_file()
    )
    for rel in files:
        assert (out / "ssw60" / rel).read_bytes() == (src / rel).read_bytes()


def test_truncated_archive_is_a_clear_error(tmp_path):
    src = make_fake_ssw60(tmp_path / "src", n_species=1, clip_s=0.1)
    archive = pack_tar_gz(src, tmp_path / "ssw60.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(InputFileError, match="ssw60.tar.gz"):
        extract_tar(archive, tmp_path / "dest", progress=False)


@pytest.fixture(scope="module")
def fake_archive(tmp_path_factory) -> tuple[Path, bytes]:
    work = tmp_path_factory.mktemp("arch")
    src = make_fake_ssw60(work / "src", n_species=2, clip_s=0.2)
    archive = pack_tar_gz(src, work / "ssw60.tar.gz")
    return archive, archive.read_bytes()


def test_fetch_downloads_extracts_verifies_then_skips(tmp_path, fake_archive):
    _, data = fake_archive
    dest = tmp_path / "data"
    with _Server(data, cut_first=[len(data) // 3]) as srv:
        report = fetch_ssw60(dest, srv.url, _md5(data), expected_counts=None, **FAST)
        assert report["ok"] and report["downloaded"]
        assert srv.requests == [None, f"bytes={len(data) // 3}-"]
        assert report["root"] == str(dest / "ssw60")
        assert report["missing"] == SSW60(dest, warn_missing=False).missing
        assert len(report["missing"]) == 1
        again = fetch_ssw60(dest, srv.url, _md5(data), expected_counts=None, **FAST)
        assert again["ok"] and not again["downloaded"]
        assert len(srv.requests) == 2  # nothing fetched the second time
    assert (dest / "ssw60.tar.gz").is_file()


def test_fetch_can_drop_the_archive_and_refuses_without_url(tmp_path, fake_archive):
    _, data = fake_archive
    with _Server(data) as srv:
        fetch_ssw60(tmp_path, srv.url, _md5(data), expected_counts=None, keep_archive=False, **FAST)
    assert not (tmp_path / "ssw60.tar.gz").exists()
    with pytest.raises(DataNotFoundError, match="pass --url"):
        fetch_ssw60(tmp_path / "empty", None, expected_counts=None, **FAST)


def test_fetch_raises_when_extraction_does_not_verify(tmp_path, fake_archive):
    _, data = fake_archive
    with (
        _Server(data) as srv,
        pytest.raises(DataNotFoundError, match="does not verify.*SSW60 has 60"),
    ):
        fetch_ssw60(tmp_path, srv.url, _md5(data), **FAST)  # published counts: a fake fails


def test_verify_reports_problems_without_raising(tmp_path):
    empty = verify_ssw60(tmp_path)
    assert not empty["ok"] and "no SSW60 dataset" in empty["problems"][0]
    base = make_fake_ssw60(tmp_path, n_species=2, clip_s=0.1)
    assert verify_ssw60(tmp_path, expected_counts=None)["ok"]
    assert not verify_ssw60(tmp_path, expected_counts=None, max_missing=0)["ok"]
    counts = {"audio": {"train": 4, "test": 4}, "inat": {"all": 13}}
    assert verify_ssw60(tmp_path, expected_counts=counts)["problems"] == [
        "taxa.csv lists 2 species, SSW60 has 60"
    ]
    counts = {"audio": {"train": 6}}
    report = verify_ssw60(tmp_path, expected_counts=counts)
    assert "audio_ml.csv lists 4 train rows; SSW60 has 6" in report["problems"]
    (base / "images_inat.csv").unlink()
    report = verify_ssw60(tmp_path, expected_counts=None)
    assert report["problems"] == ["images_inat.csv is missing"]
    text = format_ssw60_report(report)
    assert (
        "NOT OK" in text and "inat     (no CSV)" in text and "absent files: images_nabirds/" in text
    )
