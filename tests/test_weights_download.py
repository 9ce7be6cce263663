"""Verified downloads: local HTTP server with Range support and a connection that drops mid-file."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from genesis.cli.weights import main as weights_main
from genesis.errors import ChecksumError, GenesisWarning, WeightsError
from genesis.weights import WeightsEntry, WeightsSettings, download, verify_cached
from genesis.weights.download import cached_path, part_path, read_record, record_path

PAYLOAD = np.random.default_rng(7).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """A tiny file server on 127.0.0.1: honours ``Range: bytes=N-``; can drop a transfer half-way."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}  # path -> number of upcoming GETs to cut off half-way
        self.ranges = True
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                server.log.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                range_header = self.headers.get("Range")
                if server.ranges and range_header and range_header.startswith("bytes="):
                    start = int(range_header[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                if server.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if server.drop.get(self.path, 0) > 0:
                    server.drop[self.path] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def gets(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.log if p == path]


@pytest.fixture()
def server():
    srv = _Server()
    srv.files["/w.bin"] = PAYLOAD
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture()
def settings(tmp_path: Path) -> WeightsSettings:
    return WeightsSettings(cache_dir=tmp_path / "cache", progress=False, timeout=10, retries=0)


def _entry(url: str, **kw) -> WeightsEntry:
    return WeightsEntry(name="unet3d.test_weights", urls=[url], filename="w.bin", format="genesis", **kw)


def test_download_verifies_and_caches_then_hits_cache_without_network(server, settings):
    entry = _entry(server.url + "/w.bin", sha256=SHA, size=len(PAYLOAD))
    path = download(entry, settings)
    assert path == cached_path(entry, settings) and path.read_bytes() == PAYLOAD
    assert not part_path(entry, settings).exists()
    assert server.gets("/w.bin") == [None]
    again = download(entry, settings)  # cache hit: verified, no request
    assert again == path and len(server.log) == 1
    assert verify_cached(entry, settings).checked_against == "published"


def test_resume_after_dropped_connection_within_one_call(server, settings):
    server.drop["/w.bin"] = 1
    settings.retries = 2
    entry = _entry(server.url + "/w.bin", sha256=SHA)
    path = download(entry, settings)
    assert path.read_bytes() == PAYLOAD
    ranges = server.gets("/w.bin")
    assert ranges[0] is None and ranges[1] == f"bytes={len(PAYLOAD) // 2}-"


def test_interrupted_download_keeps_part_and_resumes_on_next_call(server, settings):
    server.drop["/w.bin"] = 1
    entry = _entry(server.url + "/w.bin", sha256=SHA)
    with pytest.raises(WeightsError, match="resume"):
        download(entry, settings)
    part = part_path(entry, settings)
    assert part.stat().st_size == len(PAYLOAD) // 2 and not cached_path(entry, settings).exists()
    download(entry, settings)
    assert cached_path(entry, settings).read_bytes() == PAYLOAD and not part.exists()
    assert server.gets("/w.bin")[-1] == f"bytes={len(PAYLOAD) // 2}-"


def test_partial_is_dropped_when_server_cannot_resume(server, settings):
    server.ranges = False
    server.drop["/w.bin"] = 1
    entry = _entry(server.url + "/w.bin", sha256=SHA)
    with pytest.raises(WeightsError):
        download(entry, settings)
    assert not part_path(entry, settings).exists()  # not resumable: nothing kept
    download(entry, settings)
    assert cached_path(entry, settings).read_bytes() == PAYLOAD


def test_hash_mismatch_is_refused_and_leaves_nothing(server, settings):
    entry = _entry(server.url + "/w.bin", sha256="0" * 64)
    with pytest.raises(ChecksumError, match="deleted"):
        download(entry, settings)
    folder = cached_path(entry, settings).parent
    assert [p.name for p in folder.iterdir() if p.name != ".lock"] == []


def test_size_mismatch_is_refused(server, settings):
    with pytest.raises(ChecksumError, match="size"):
        download(_entry(server.url + "/w.bin", size=len(PAYLOAD) + 1), settings)


def test_offline_uses_cache_only(server, settings):
    entry = _entry(server.url + "/w.bin", sha256=SHA)
    settings.offline = True
    with pytest.raises(WeightsError, match="offline"):
        download(entry, settings)
    assert server.log == []
    settings.offline = False
    download(entry, settings)
    settings.offline = True
    assert download(entry, settings).read_bytes() == PAYLOAD
    assert len(server.log) == 1


def test_file_url(tmp_path, settings):
    source = tmp_path / "dir with space" / "w.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    entry = _entry(source.as_uri(), sha256=SHA)
    assert download(entry, settings).read_bytes() == PAYLOAD
    missing = WeightsEntry(name="unet3d.missing_file", urls=[(tmp_path / "nope.bin").as_uri()])
    with pytest.raises(WeightsError, match="not found"):
        download(missing, settings)


def test_trust_on_first_use_records_then_checks(server, settings):
    entry = _entry(server.url + "/w.bin")  # upstream publishes no sha256
    with pytest.warns(GenesisWarning, match="trust-on-first-use"):
        path = download(entry, settings)
    record = read_record(entry, settings)
    assert record["sha256"] == SHA and record["how"] == "trust-on-first-use"
    assert verify_cached(entry, settings).checked_against == "recorded"
    path.write_bytes(PAYLOAD[:-1] + b"\x00")  # tampered after the first download
    with pytest.raises(ChecksumError, match="recorded"):
        download(entry, settings)
    with pytest.raises(ChecksumError):
        verify_cached(entry, settings)


def test_torchvision_style_prefix_is_checked(server, settings):
    good = _entry(server.url + "/w.bin", sha256_prefix=SHA[:8])
    download(good, settings)
    assert read_record(good, settings)["how"] == "prefix-checked"
    bad = WeightsEntry(name="unet3d.bad_prefix", urls=[server.url + "/w.bin"], sha256_prefix="deadbeef")
    with pytest.raises(ChecksumError, match="prefix"):
        download(bad, settings)
    assert not cached_path(bad, settings).exists() and not part_path(bad, settings).exists()


def test_mirrors_are_tried_in_order(server, settings):
    entry = WeightsEntry(name="unet3d.mirrors", urls=[server.url + "/missing.bin", server.url + "/w.bin"], sha256=SHA)
    assert download(entry, settings).read_bytes() == PAYLOAD


def test_cli_list_info_download_verify_path_offline(server, tmp_path, monkeypatch, capsys):
    registry = tmp_path / "mine.yaml"
    registry.write_text(yaml.safe_dump({"weights": [
        {"name": "unet3d.cli_test", "urls": [server.url + "/w.bin"], "sha256": SHA, "format": "genesis"},
    ]}))
    monkeypatch.setenv("GENESIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GENESIS_WEIGHTS_REGISTRY", str(registry))
    monkeypatch.delenv("GENESIS_OFFLINE", raising=False)
    assert weights_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "unet3d.cli_test" in out and "unet3d.genesis_chest_ct" in out
    assert weights_main(["info", "unet3d.cli_test"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["sha256"] == SHA
    monkeypatch.setenv("GENESIS_OFFLINE", "1")
    assert weights_main(["path", "unet3d.cli_test"]) == 2
    assert "offline" in capsys.readouterr().err
    monkeypatch.delenv("GENESIS_OFFLINE")
    assert weights_main(["download", "unet3d.cli_test"]) == 0
    capsys.readouterr()
    assert weights_main(["--offline", "path", "unet3d.cli_test"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.read_bytes() == PAYLOAD
    assert weights_main(["verify"]) == 0 and "ok" in capsys.readouterr().out
    path.write_bytes(b"corrupted")
    assert weights_main(["verify"]) == 1
    assert weights_main(["verify", "unet3d.cli_test"]) == 2
    assert "differs" in capsys.readouterr().err
    assert weights_main(["info", "unet3d.nope"]) == 2
    assert "unknown weights" in capsys.readouterr().err


def test_example_entries_are_never_downloaded(settings):
    entry = WeightsEntry(name="unet3d.example_template", example=True)
    with pytest.raises(WeightsError, match="example"):
        download(entry, settings)


def test_corrupt_record_is_reported(server, settings):
    entry = _entry(server.url + "/w.bin")
    with pytest.warns(GenesisWarning):
        download(entry, settings)
    record_path(entry, settings).write_text("{not json")
    with pytest.raises(ChecksumError, match="corrupt checksum record"):
        verify_cached(entry, settings)
    record_path(entry, settings).write_text(json.dumps({"sha256": SHA, "how": "trust-on-first-use"}))
    assert verify_cached(entry, settings).sha256 == SHA
