"""Fetch SSW60: resumable download, md5 check, safe extraction, verification.

Backend of ``songsight data ssw60 DIR [--url URL]``. The archive is 31.1 GB (about 32 GB
extracted); the download continues a ``.part`` file with an HTTP ``Range`` request after any
interruption (within one run, with retries, or in a later run) and restarts from zero when the
server ignores ``Range``. The final name only ever holds an archive whose md5 matched.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

# verify_ssw60 and format_ssw60_report live with the layout; re-exported for the CLI.
from songsight.data.ssw60 import PUBLISHED_COUNTS, format_ssw60_report, verify_ssw60
from songsight.errors import DataNotFoundError, InputFileError, SongsightError

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_BYTES", "DEFAULT_URL", "SSW60_ARCHIVE_GB", "SSW60_MD5", "download_file", "extract_tar",
    "fetch_ssw60", "format_ssw60_report", "md5_file", "verify_ssw60",
]  # fmt: skip

# From github.com/visipedia/ssw60 README ("Download Link").
DEFAULT_URL = "https://ml-inat-competition-datasets.s3.amazonaws.com/ssw60/ssw60.tar.gz"
SSW60_MD5 = "af0a54ea1a897d130d91be8ffe0de81c"
SSW60_ARCHIVE_GB = 31.1
CHUNK_BYTES = 1 << 20
_USER_AGENT = "songsight (+https://github.com/visipedia/ssw60 downloader)"


class _Retryable(Exception):
    """A network failure worth another try from where the ``.part`` file ends."""


def md5_file(path: str | Path, *, chunk_bytes: int = CHUNK_BYTES, progress: bool = False) -> str:
    """Hex md5 of a file, read in ``chunk_bytes`` pieces (constant memory)."""
    path = Path(path)
    digest = hashlib.md5()
    with (
        path.open("rb") as fh,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"md5 {path.name}", disable=not progress,
        ) as bar,
    ):  # fmt: skip
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _total_from_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-999/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


class _Part:
    """The ``.part`` file and an md5 of its bytes, kept in step as chunks are appended."""

    def __init__(self, path: Path):
        self.path = path
        self.digest = hashlib.md5()
        self.hashed = 0

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.digest, self.hashed = hashlib.md5(), 0

    def sync(self) -> None:
        """Re-hash the file when the in-memory digest does not cover it (a resumed run)."""
        if self.hashed != self.size:
            self.digest, self.hashed = hashlib.md5(), 0
            with self.path.open("rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    self.digest.update(chunk)
                    self.hashed += len(chunk)

    def hexdigest(self) -> str:
        self.sync()
        return self.digest.hexdigest()


def _open(url: str, offset: int, timeout_s: float):
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)


def _transfer(url: str, part: _Part, *, progress: bool, timeout_s: float, chunk_bytes: int) -> bool:
    """One request: append to ``part`` until the server stops. True when the file is complete.

    Raises `_Retryable` for network failures and short reads, `DataNotFoundError` for HTTP
    errors that another try will not fix.
    """
    offset = part.size
    try:
        resp = _open(url, offset, timeout_s)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and offset:
                _, total = _total_from_content_range(exc.headers.get("Content-Range"))
                if total == offset:
                    return True  # an earlier run stopped right after the last byte
                log.warning("%s: server refused to resume at byte %d; restarting", url, offset)
                part.restart()
                return False
            if exc.code in (408, 429) or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
            raise DataNotFoundError(
                f"download of {url} failed: HTTP {exc.code} {exc.reason}; check the URL "
                f"(the official one is {DEFAULT_URL})"
            ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(str(getattr(exc, "reason", exc))) from exc

    with resp:
        if resp.status == 206:
            start, total = _total_from_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                log.warning("%s: server resumed at %s, not %d; restarting", url, start, offset)
                part.restart()
                return False
            part.sync()
        else:
            if offset:
                log.warning("%s: server ignores Range requests; restarting from zero", url)
            part.restart()
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is not None:
            free = shutil.disk_usage(part.path.parent).free
            if free < total - offset:
                raise SongsightError(
                    f"not enough free space in {part.path.parent}: {(total - offset) / 1e9:.1f} GB "
                    f"still to download, {free / 1e9:.1f} GB free"
                )
        with (
            part.path.open("ab") as fh,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=Path(urllib.parse.urlparse(url).path).name or "download",
                disable=not progress,
            ) as bar,
        ):  # fmt: skip
            while True:
                try:
                    chunk = resp.read(chunk_bytes)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retryable(f"connection lost at byte {offset}: {exc!r}") from exc
                if not chunk:
                    break
                fh.write(chunk)
                part.digest.update(chunk)
                part.hashed += len(chunk)
                offset += len(chunk)
                bar.update(len(chunk))
    if total is not None and offset < total:
        # http.client ends a body cut short with b"" rather than an error.
        raise _Retryable(f"connection closed at byte {offset} of {total}")
    return True


def download_file(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 2.0,
    chunk_bytes: int = CHUNK_BYTES,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming what a previous try left.

    Network failures and short reads are retried ``retries`` times (waiting ``backoff_s``,
    doubling, at most 60 s); the ``.part`` file stays for a later run. On an md5 mismatch the
    bytes are moved to ``dest.md5-mismatch`` and `InputFileError` is raised, so ``dest`` never
    holds a corrupt archive. An existing ``dest`` is checked against ``md5`` and kept.
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = md5.lower() if md5 else None
    if dest.is_file():
        if expected is None:
            return dest
        got = md5_file(dest, progress=progress)
        if got == expected:
            return dest
        raise InputFileError(
            str(dest), f"md5 {got} does not match the expected {expected}; delete it and rerun"
        )
    part = _Part(dest.with_name(dest.name + ".part"))
    failures = 0
    while True:
        try:
            if _transfer(
                url, part, progress=progress, timeout_s=timeout_s, chunk_bytes=chunk_bytes
            ):
                break
        except _Retryable as exc:
            failures += 1
            if failures > retries:
                raise DataNotFoundError(
                    f"download of {url} failed after {retries} retries ({exc}); "
                    f"{part.size} bytes kept in {part.path}: rerun to resume"
                ) from exc
            wait_s = min(backoff_s * 2 ** (failures - 1), 60.0)
            log.warning("%s: %s; retry %d/%d in %.0f s", url, exc, failures, retries, wait_s)
            time.sleep(wait_s)
    got = part.hexdigest()
    if expected is not None and got != expected:
        bad = dest.with_name(dest.name + ".md5-mismatch")
        os.replace(part.path, bad)
        raise InputFileError(
            str(dest),
            f"downloaded md5 {got} does not match the expected {expected}; the bytes were moved "
            f"to {bad} (delete it and rerun to download again)",
        )
    os.replace(part.path, dest)
    return dest


def _within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _check_member(member: tarfile.TarInfo, dest: str) -> str | None:
    """Why ``member`` may not be extracted under ``dest`` (a realpath), or None when safe.

    Paths are resolved against what is already on disk, so a link extracted earlier cannot be
    used to step outside (``up -> ..`` then ``up/../x``).
    """
    name = member.name
    target = os.path.realpath(os.path.join(dest, name))
    if os.path.isabs(name) or not _within(target, dest):
        return "its path leaves the destination"
    if member.isdev() or member.isfifo():
        return "it is a device or FIFO"
    if member.issym() or member.islnk():
        if not hasattr(tarfile, "data_filter"):
            return "links are refused on this Python (no tarfile data filter)"
        base = os.path.dirname(target) if member.issym() else dest
        link = os.path.realpath(os.path.join(base, member.linkname))
        if os.path.isabs(member.linkname) or not _within(link, dest):
            return "it links outside the destination"
    return None


class _CountingReader:
    """A file wrapper that advances a progress bar by the compressed bytes read."""

    def __init__(self, fh, bar: tqdm):
        self._fh, self._bar = fh, bar

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._bar.update(len(data))
        return data


def extract_tar(archive: str | Path, dest_dir: str | Path, *, progress: bool = True) -> Path:
    """Extract a (compressed) tar into ``dest_dir`` in one streaming pass; returns ``dest_dir``.

    Refuses, with `InputFileError`, any member whose path or link target leaves ``dest_dir``,
    absolute names and device files; Python's ``tarfile`` ``data`` filter is applied too where
    available. Members before a refused one stay extracted.
    """
    archive = Path(archive)
    dest = Path(dest_dir).expanduser().absolute()
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with (
        archive.open("rb") as raw,
        tqdm(
            total=archive.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"extract {archive.name}", disable=not progress,
        ) as bar,
    ):  # fmt: skip
        try:
            with tarfile.open(fileobj=_CountingReader(raw, bar), mode="r|*") as tar:
                for member in tar:
                    reason = _check_member(member, root)
                    if reason:
                        raise InputFileError(
                            str(archive), f"refusing member {member.name!r}: {reason}"
                        )
                    tar.extract(member, root, **safe)
        except tarfile.TarError as exc:  # FilterError and corrupt archives
            raise InputFileError(str(archive), f"cannot extract: {exc}") from exc
        except EOFError as exc:
            raise InputFileError(str(archive), f"archive is truncated: {exc}") from exc
    return dest


def fetch_ssw60(
    dest_dir: str | Path,
    url: str | None = DEFAULT_URL,
    md5: str | None = SSW60_MD5,
    progress: bool = True,
    *,
    expected_counts: Mapping[str, Mapping[str, int]] | None = PUBLISHED_COUNTS,
    max_missing: int = 1,
    keep_archive: bool = True,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 2.0,
) -> dict:
    """Make ``dest_dir/ssw60`` a verified SSW60 extraction; returns the `verify_ssw60` report.

    Skips everything when ``dest_dir`` (or ``dest_dir/ssw60``) already verifies. Otherwise
    downloads ``url`` (31.1 GB; resumable) to ``dest_dir/<archive name>``, checks ``md5``,
    extracts safely and verifies; ``keep_archive=False`` deletes the archive after success.
    The report gains ``"downloaded": bool``. Raises `DataNotFoundError` when the download fails
    or the extraction does not verify, `InputFileError` on an md5 mismatch or unsafe archive.
    """
    dest = Path(dest_dir).expanduser().absolute()
    report = verify_ssw60(dest, expected_counts=expected_counts, max_missing=max_missing)
    if report["ok"]:
        log.info("SSW60 already extracted and verified at %s; nothing to download", report["root"])
        return {**report, "downloaded": False}
    if not url:
        raise DataNotFoundError(
            f"no SSW60 at {dest} and no URL to fetch it from; pass --url (official: {DEFAULT_URL})"
        )
    name = Path(urllib.parse.urlparse(url).path).name or "ssw60.tar.gz"
    archive = download_file(
        url, dest / name, md5=md5, progress=progress, retries=retries, timeout_s=timeout_s,
        backoff_s=backoff_s,
    )  # fmt: skip
    free = shutil.disk_usage(dest).free
    if free < archive.stat().st_size:
        log.warning("only %.1f GB free in %s for extraction (~%.1f GB needed)",
                    free / 1e9, dest, archive.stat().st_size * 1.03 / 1e9)  # fmt: skip
    extract_tar(archive, dest, progress=progress)
    report = verify_ssw60(dest, expected_counts=expected_counts, max_missing=max_missing)
    if not report["ok"]:
        raise DataNotFoundError(
            f"{archive} extracted into {dest} but does not verify: " + "; ".join(report["problems"])
        )
    if not keep_archive:
        archive.unlink()
    return {**report, "downloaded": True}
