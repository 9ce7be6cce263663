"""Verified downloads into the weights cache: resume, checksums, trust-on-first-use, offline mode.

Layout of the cache (``WeightsSettings.cache_dir``)::

    weights/<name>/<file>               the verified file (moved in atomically)
    weights/<name>/<file>.part          an interrupted download, kept only while it can be resumed
    weights/<name>/<file>.sha256.json   the digest recorded on first download when upstream
                                        publishes none (trust-on-first-use), checked afterwards

Only the standard library talks to the network (``urllib``): HTTP ``Range`` requests resume an
interrupted transfer; ``file://`` URLs are copied (and resumed) locally.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import math
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from genesis.errors import ChecksumError, GenesisWarning, WeightsError
from genesis.fileio import atomic_write_text
from genesis.weights.manifest import WeightsEntry, WeightsSettings

CHUNK = 1 << 20
USER_AGENT = "genesis-weights (urllib)"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def entry_dir(entry: WeightsEntry, settings: WeightsSettings) -> Path:
    return Path(settings.cache_dir) / "weights" / entry.name


def cached_path(entry: WeightsEntry, settings: WeightsSettings) -> Path:
    """Where the verified file of ``entry`` lives (whether or not it is there yet)."""
    return entry_dir(entry, settings) / entry.cache_filename


def part_path(entry: WeightsEntry, settings: WeightsSettings) -> Path:
    return cached_path(entry, settings).with_name(entry.cache_filename + ".part")


def record_path(entry: WeightsEntry, settings: WeightsSettings) -> Path:
    return cached_path(entry, settings).with_name(entry.cache_filename + ".sha256.json")


def read_record(entry: WeightsEntry, settings: WeightsSettings) -> dict | None:
    """The trust-on-first-use record of ``entry``, or None."""
    path = record_path(entry, settings)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise ValueError("no sha256")
    except (ValueError, OSError) as exc:
        raise ChecksumError(f"corrupt checksum record ({exc}); delete it and download again", path) from None
    return record


@dataclass
class Verification:
    """Outcome of checking a file: its digest and what it was checked against."""

    path: Path
    sha256: str
    checked_against: str  # "published", "prefix", "recorded" or "recorded-now"


def _expected(entry: WeightsEntry, settings: WeightsSettings) -> tuple[str | None, str]:
    if entry.sha256:
        return entry.sha256, "published"
    record = read_record(entry, settings)
    if record is not None:
        return record["sha256"], "recorded"
    return None, "none"


def _record_first_use(entry: WeightsEntry, settings: WeightsSettings, digest: str, size: int, url: str | None) -> None:
    how = "prefix-checked" if entry.sha256_prefix else "trust-on-first-use"
    record = {
        "name": entry.name,
        "file": entry.cache_filename,
        "sha256": digest,
        "size": size,
        "url": url,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "how": how,
    }
    path = record_path(entry, settings)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    if how == "trust-on-first-use":
        warnings.warn(
            f"{entry.name}: upstream publishes no sha256 for {entry.cache_filename}; recorded "
            f"sha256 {digest} on first download (trust-on-first-use) in {path}. Later uses are "
            "checked against it; compare it with a trusted copy if you can.",
            GenesisWarning,
            stacklevel=3,
        )


def verify_file(
    entry: WeightsEntry, path: str | Path, settings: WeightsSettings, *, url: str | None = None, record: bool = True
) -> Verification:
    """Check ``path`` against the published digest, the published prefix and/or the recorded digest.

    With nothing to check against (no published digest, no record) the digest is recorded now
    (trust-on-first-use, with a :class:`GenesisWarning`) when ``record`` is true.

    Raises:
        ChecksumError: size or digest differs from what is expected.
    """
    path = Path(path)
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise ChecksumError(f"{entry.name}: size {size} bytes, expected {entry.size}", path)
    digest = sha256_file(path)
    if entry.sha256_prefix and not digest.startswith(entry.sha256_prefix):
        raise ChecksumError(
            f"{entry.name}: sha256 {digest} does not start with the published prefix {entry.sha256_prefix}", path
        )
    expected, how = _expected(entry, settings)
    if expected is not None:
        if digest != expected:
            where = "published in the manifest" if how == "published" else f"recorded in {record_path(entry, settings)}"
            raise ChecksumError(f"{entry.name}: sha256 {digest} differs from the {expected} {where}", path)
        return Verification(path, digest, how)
    if record:
        _record_first_use(entry, settings, digest, size, url)
        return Verification(path, digest, "recorded-now")
    return Verification(path, digest, "prefix" if entry.sha256_prefix else "none")


class _Interrupted(Exception):
    """A transfer stopped part-way; ``resumable`` says whether the ``.part`` file can be continued."""

    def __init__(self, message: str, resumable: bool) -> None:
        super().__init__(message)
        self.resumable = resumable


def _progress_bar(settings: WeightsSettings, total: int | None, initial: int, label: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
        disable=not settings.progress, leave=False,
    )


@dataclass
class _Limits:
    """What bounds one file's download: a monotonic deadline, the manifest's size, and the time
    left for waiting on servers to answer (connect and response headers, over all attempts)."""

    deadline: float
    seconds: float
    max_size: int | None
    connect_seconds: float = math.inf
    connect_left: float = math.inf
    connect_attempts: int = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def connect_wait(self) -> float:
        """Seconds the next connection may wait for its answer.

        Raises:
            WeightsError: the waits of earlier attempts used up ``connect_deadline``.
        """
        if self.connect_left <= 0:
            raise WeightsError(
                f"no answer from the server within {self.connect_seconds:g} s of connecting and waiting for the "
                f"response, over {self.connect_attempts} attempt{'s' if self.connect_attempts != 1 else ''} "
                "(connect_deadline): it is down, unreachable or overloaded; try again later or raise the limit")
        return self.connect_left

    def check_time(self, received: int) -> None:
        if self.remaining() <= 0:
            raise WeightsError(
                f"download did not finish within {self.seconds:g} s ({received} bytes received): the server is "
                "stalled or too slow; try again later or raise the limit (--timeout)")


def _copy_stream(source, part: Path, mode: str, expected: int | None, settings: WeightsSettings, initial: int,
                 label: str, resumable: bool, limits: _Limits | None = None) -> None:
    written = 0
    # read1 returns what has arrived; read(n) would wait for n bytes from a server trickling them.
    read = getattr(source, "read1", source.read)
    with open(part, mode) as out, _progress_bar(settings, initial + expected if expected is not None else None,
                                                 initial, label) as bar:
        try:
            while True:
                try:
                    block = read(CHUNK)
                except (OSError, http.client.HTTPException, socket.timeout) as exc:
                    raise _Interrupted(f"transfer interrupted after {initial + written} bytes: {exc}", resumable) from None
                if limits is not None:
                    total = initial + written + len(block)
                    if limits.max_size is not None and total > limits.max_size:
                        raise WeightsError(f"the server sent more than the {limits.max_size} bytes the manifest "
                                           "declares; download aborted", part)
                    if block:
                        limits.check_time(total)
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as exc:  # disk full, permissions: retrying the network will not help
                    raise WeightsError(f"cannot write the download: {exc}", part) from None
                written += len(block)
                bar.update(len(block))
        except _Interrupted:
            raise
        except WeightsError:
            out.close()
            part.unlink(missing_ok=True)  # too big, too slow or unwritable: nothing worth resuming
            raise
        except BaseException:  # Ctrl-C: keep the partial file only if it can be resumed
            out.close()
            if not resumable:
                part.unlink(missing_ok=True)
            raise
        out.flush()
        os.fsync(out.fileno())
    # urllib returns a short body silently when the server closes early, so count the bytes.
    if expected is not None and written != expected:
        raise _Interrupted(f"connection closed after {initial + written} of {initial + expected} bytes", resumable)


def _transfer_file_url(url: str, part: Path, settings: WeightsSettings, label: str, limits: _Limits) -> None:
    source = Path(unquote(urlparse(url).path))
    if not source.is_file():
        raise WeightsError(f"file not found for {url}", source)
    total = source.stat().st_size
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:
        offset = 0
    with open(source, "rb") as handle:
        handle.seek(offset)
        _copy_stream(handle, part, "ab" if offset else "wb", total - offset, settings, offset, label, True, limits)


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    # "bytes START-END/TOTAL" (TOTAL may be "*")
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, total = value[6:].split("/", 1)
        start = int(span.split("-", 1)[0])
        return start, (None if total.strip() == "*" else int(total))
    except ValueError:
        return None


def _set_read_timeout(response: Any, seconds: float) -> None:
    """Give the body's reads the per-read timeout back once the headers arrived.

    urllib applies one socket timeout to connecting and to every read; the connect wait may have
    been shortened by ``connect_deadline``. The socket is private to http.client: without it (another
    Python) the shorter timeout stays, which only makes a stall end an attempt sooner.
    """
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _transfer_http(url: str, part: Path, settings: WeightsSettings, label: str, limits: _Limits) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    started = time.monotonic()
    try:
        limits.check_time(offset)
        wait = limits.connect_wait()
        limits.connect_attempts += 1
        # the socket timeout bounds each wait, the deadline the whole file, connect_deadline the
        # waits for an answer summed over the attempts
        response = urllib.request.urlopen(request, timeout=max(0.01, min(settings.timeout, limits.remaining(), wait)))
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our partial file is not a prefix the server recognises
            raise _Interrupted(f"server refused to resume at byte {offset} (HTTP 416)", False) from None
        if exc.code in (408, 429) or exc.code >= 500:
            raise _Interrupted(f"HTTP {exc.code} {exc.reason}", True) from None
        raise WeightsError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Interrupted(f"cannot reach {url}: {reason}", True) from None
    finally:
        limits.connect_left -= time.monotonic() - started
    _set_read_timeout(response, max(0.01, min(settings.timeout, limits.remaining())))
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        if status == 206:
            parsed = _parse_content_range(response.headers.get("Content-Range"))
            if parsed is None or parsed[0] != offset:
                raise _Interrupted(f"server answered an unexpected range {response.headers.get('Content-Range')}", False)
            mode, initial, resumable = "ab", offset, True
        else:  # 200: the server ignored Range (or none was sent): start over
            mode, initial = "wb", 0
            resumable = response.headers.get("Accept-Ranges", "").lower() == "bytes"
        _copy_stream(response, part, mode, remaining, settings, initial, label, resumable, limits)


def _fetch(url: str, part: Path, settings: WeightsSettings, label: str, *, can_resume: bool = True,
           max_size: int | None = None) -> None:
    """Download ``url`` into ``part``, resuming after interruptions up to ``settings.retries`` times.

    ``can_resume=False`` (no known final digest) restarts every attempt from byte 0: without a
    digest to check the result against, bytes of two transfers must never be spliced. The whole
    file, retries included, must finish within ``settings.deadline`` seconds and never exceed
    ``max_size`` bytes; the waits for the server to answer, all attempts together, must stay
    within ``settings.connect_deadline`` seconds.
    """
    transfer = _transfer_file_url if url.startswith("file://") else _transfer_http
    attempts = max(0, settings.retries) + 1
    limits = _Limits(time.monotonic() + settings.deadline, settings.deadline, max_size,
                     settings.connect_deadline, settings.connect_deadline)
    for attempt in range(attempts):
        if not can_resume:
            part.unlink(missing_ok=True)
        try:
            limits.check_time(part.stat().st_size if part.exists() else 0)
            transfer(url, part, settings, label, limits)
            return
        except WeightsError as exc:
            raise WeightsError(f"download of {url} failed: {exc}") from None
        except _Interrupted as exc:
            if not exc.resumable or not can_resume:
                part.unlink(missing_ok=True)
            if attempt + 1 == attempts:
                kept = (f"the partial file {part} is kept; run the download again to resume"
                        if part.exists() else "nothing was kept")
                raise WeightsError(f"download of {url} failed: {exc} ({kept})") from None
            time.sleep(min(0.2 * 2**attempt, 2.0))


@contextlib.contextmanager
def _entry_lock(entry: WeightsEntry, settings: WeightsSettings) -> Iterator[None]:
    """Serialise downloads of one entry across processes (e.g. every DDP rank asking at once)."""
    folder = entry_dir(entry, settings)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent downloads of one entry are the user's care
        yield
        return
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def download(entry: WeightsEntry, settings: WeightsSettings, *, force: bool = False) -> Path:
    """Make sure ``entry`` is in the cache, verified; return its path.

    A cached file is verified (and used) without touching the network. Otherwise each URL is
    tried in turn; the finished file is checked and moved into the cache atomically. In offline
    mode only the cache is used.

    Raises:
        WeightsError: offline and not cached, an example entry, or every URL failed.
        ChecksumError: the file differs from its published or recorded sha256; a downloaded
            file that fails is deleted (no partial file is left behind).
    """
    if entry.example:
        raise WeightsError(f"{entry.name} is an example/template entry with no published file ({entry.origin})")
    target = cached_path(entry, settings)
    if settings.offline or (target.is_file() and not force):  # no lock needed to read the cache
        return _download_locked(entry, settings, force)
    with _entry_lock(entry, settings):
        return _download_locked(entry, settings, force)


def _download_locked(entry: WeightsEntry, settings: WeightsSettings, force: bool) -> Path:
    target = cached_path(entry, settings)
    part = part_path(entry, settings)
    if force and target.exists():
        target.unlink()
    if target.is_file():
        verify_file(entry, target, settings)
        return target
    if settings.offline:
        raise WeightsError(
            f"{entry.name} is not in the cache and offline mode is on (--offline or GENESIS_OFFLINE=1); "
            f"download it while online with `genesis-weights download {entry.name}`, or copy the file to {target}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for index, url in enumerate(entry.urls):
        if index and part.exists():  # never splice bytes from two mirrors
            part.unlink()
        # trust on first use: a .part of unknown final digest cannot be checked after resuming
        known = _expected(entry, settings)[0] is not None or bool(entry.sha256_prefix)
        try:
            _fetch(url, part, settings, entry.cache_filename, can_resume=known, max_size=entry.size)
        except WeightsError as exc:
            errors.append(str(exc))
            continue
        try:
            verify_file(entry, part, settings, url=url)
        except ChecksumError as exc:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{exc}; downloaded from {url}; the file was deleted") from None
        os.replace(part, target)
        return target
    raise WeightsError(f"could not download {entry.name}: " + "; ".join(errors or ["no URLs"]))


def ensure(name_or_entry: str | WeightsEntry, settings: WeightsSettings) -> Path:
    """Path of a registered file in the cache, downloading it when allowed."""
    entry = name_or_entry if isinstance(name_or_entry, WeightsEntry) else settings.registry().get(name_or_entry)
    return download(entry, settings)


def verify_cached(entry: WeightsEntry, settings: WeightsSettings) -> Verification:
    """Verify the cached file of ``entry`` (never downloads).

    Raises:
        WeightsError: not in the cache.
        ChecksumError: it differs from the published or recorded digest.
    """
    target = cached_path(entry, settings)
    if not target.is_file():
        raise WeightsError(f"{entry.name} is not in the cache ({target}); run `genesis-weights download {entry.name}`")
    return verify_file(entry, target, settings)


def remove_cached(entry: WeightsEntry, settings: WeightsSettings) -> None:
    """Delete the cached file, its partial download and its record."""
    shutil.rmtree(entry_dir(entry, settings), ignore_errors=True)
