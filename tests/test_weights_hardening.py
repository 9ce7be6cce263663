"""Weights: wrong dtypes refused, no spliced trust-on-first-use, bounded downloads, safe file names."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from genesis.errors import CheckpointError, ConfigError, WeightsError
from genesis.models import create_model
from genesis.weights import WeightsEntry, WeightsSettings, download
from genesis.weights.download import cached_path, part_path
from genesis.weights.load import load_weights
from genesis.weights.manifest import entry_from_dict

PAYLOAD = bytes(range(256)) * 200


class _Server:
    """127.0.0.1 server: ``mode`` "plain" honours Range, "trickle" sends a byte every 0.1 s,
    "oversize" sends twice the payload, "pause" waits 0.3 s half-way through the body."""

    def __init__(self) -> None:
        self.mode = "plain"
        self.ranges: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.ranges.append(self.headers.get("Range"))
                body = PAYLOAD * 2 if server.mode == "oversize" else PAYLOAD
                start = 0
                rng = self.headers.get("Range")
                if rng and server.mode == "plain":
                    start = int(rng[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                try:
                    if server.mode == "trickle":
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.1)
                    elif server.mode == "pause":
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        time.sleep(0.3)
                        self.wfile.write(body[len(body) // 2:])
                    else:
                        self.wfile.write(body[start:])
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/w.bin"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture()
def server():
    srv = _Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _settings(tmp_path: Path, **kw) -> WeightsSettings:
    return WeightsSettings(cache_dir=tmp_path / "cache", progress=False, timeout=5, retries=0, **kw)


def _entry(url: str, **kw) -> WeightsEntry:
    return WeightsEntry(name="unet3d.hardening", urls=[url], filename="w.bin", format="genesis", **kw)


def test_unknown_digest_never_resumes_a_stale_part(server, tmp_path) -> None:
    settings, entry = _settings(tmp_path), _entry(server.url)
    part = part_path(entry, settings)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"spliced bytes from another file" * 10)
    with pytest.warns(Warning, match="trust-on-first-use"):
        path = download(entry, settings)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == [None]  # restarted from byte 0, no Range request


def test_known_digest_still_resumes(server, tmp_path) -> None:
    settings = _settings(tmp_path)
    entry = _entry(server.url, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    part = part_path(entry, settings)
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1000])
    assert download(entry, settings).read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=1000-"]


def test_stalled_server_hits_the_deadline(server, tmp_path) -> None:
    server.mode = "trickle"
    settings, entry = _settings(tmp_path, deadline=0.6), _entry(server.url)
    start = time.monotonic()
    with pytest.raises(WeightsError, match="did not finish within 0.6 s"):
        download(entry, settings)
    assert time.monotonic() - start < 3.0
    assert not part_path(entry, settings).exists() and not cached_path(entry, settings).exists()


@pytest.fixture()
def silent_server():
    """127.0.0.1 port whose kernel accepts connections (listen backlog) that nobody ever answers."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/w.bin"
    finally:
        sock.close()


@pytest.mark.parametrize("timeout, retries", [(60.0, 3), (0.3, 20)])
def test_server_that_never_answers_fails_within_one_connect_deadline(silent_server, tmp_path, timeout,
                                                                      retries) -> None:
    # today: (retries + 1) x timeout (4 x 60 s); now one connect_deadline over all attempts
    settings = WeightsSettings(cache_dir=tmp_path / "cache", progress=False, timeout=timeout, retries=retries,
                               connect_deadline=0.8)
    entry = _entry(silent_server, sha256="0" * 64)
    start = time.monotonic()
    with pytest.raises(WeightsError, match=r"no answer from the server within 0.8 s.*connect_deadline") as info:
        download(entry, settings)
    assert time.monotonic() - start < 4.0
    assert silent_server in str(info.value)
    assert not cached_path(entry, settings).exists()


def test_connect_deadline_does_not_shorten_the_reads_of_an_answered_request(server, tmp_path) -> None:
    server.mode = "pause"  # answers at once, then pauses 0.3 s mid-body: longer than the connect limit
    settings = _settings(tmp_path, connect_deadline=0.1)
    entry = _entry(server.url, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert download(entry, settings).read_bytes() == PAYLOAD


def test_finetune_weight_downloads_share_the_deadline_setting(server, tmp_path, monkeypatch) -> None:
    """``genesis-finetune --weights NAME`` resolves through load_weights -> WeightsSettings.from_env:
    $GENESIS_DOWNLOAD_TIMEOUT bounds that download as ``genesis-weights --timeout`` does."""
    import yaml

    server.mode = "trickle"
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"name": "unet3d.hardening", "urls": [server.url], "filename": "w.bin",
                                        "format": "genesis"}))
    monkeypatch.setenv("GENESIS_WEIGHTS_REGISTRY", str(registry))
    monkeypatch.setenv("GENESIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GENESIS_DOWNLOAD_TIMEOUT", "0.6")
    assert WeightsSettings.from_env().deadline == 0.6
    start = time.monotonic()
    with pytest.raises(WeightsError, match="did not finish within 0.6 s"):
        load_weights(create_model("unet3d", base_width=2), "unet3d.hardening")
    assert time.monotonic() - start < 5.0
    monkeypatch.setenv("GENESIS_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="GENESIS_DOWNLOAD_TIMEOUT"):
        WeightsSettings.from_env()


def test_more_bytes_than_the_manifest_size_abort(server, tmp_path) -> None:
    server.mode = "oversize"
    settings, entry = _settings(tmp_path), _entry(server.url, size=len(PAYLOAD))
    with pytest.raises(WeightsError, match=f"more than the {len(PAYLOAD)} bytes"):
        download(entry, settings)
    assert not part_path(entry, settings).exists()


@pytest.mark.parametrize("filename", ["../evil.bin", "sub/w.bin", "..", "a\\b.bin"])
def test_manifest_file_names_stay_in_the_cache(filename) -> None:
    with pytest.raises(ConfigError, match="plain file name"):
        entry_from_dict({"name": "unet3d.evil", "urls": ["http://127.0.0.1:9/w.bin"], "filename": filename})
    with pytest.raises(ConfigError, match="plain file name"):
        entry_from_dict({"name": "unet3d.evil", "urls": ["http://127.0.0.1:9/%2E%2E"]})


def test_wrong_dtype_weights_are_refused(tmp_path) -> None:
    model = create_model("unet3d", base_width=2)
    state = {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "int8.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError, match="wrong dtype"):
        load_weights(create_model("unet3d", base_width=2), path)
    good = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in good.items()}, str(tmp_path / "fp16.safetensors"))
    report = load_weights(create_model("unet3d", base_width=2), tmp_path / "fp16.safetensors")  # precision is fine
    assert report.loaded and not report.mismatched
