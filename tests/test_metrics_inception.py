"""The Inception weights file: SHA-256 checked against the prefix in its name before use, downloads with a
timeout that leave no partial file behind, no download when disabled, messages on stderr only."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import time
import urllib.request

import pytest
import torch

from diffusion.metrics import inception
from diffusion.metrics.inception import (InceptionWeightsCorrupt, InceptionWeightsMissing, download_weights,
                                         ensure_weights, load_inception, verify_weights, weights_path)
from tests.messages import exact

PAYLOAD = b"not really inception weights\n" * 1000
PREFIX = hashlib.sha256(PAYLOAD).hexdigest()[:8]


@pytest.fixture
def server():
    """A local HTTP server: /good serves PAYLOAD, /bad other bytes, /stall half the bytes then hangs."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = {"/good": PAYLOAD, "/bad": PAYLOAD[::-1] + b"x", "/stall": PAYLOAD}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path == "/stall":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                release.wait(10)
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    release.set()
    httpd.shutdown()
    httpd.server_close()


def test_weights_url_is_pytorch_fids():
    from pytorch_fid.inception import FID_WEIGHTS_URL

    assert inception.WEIGHTS_URL == FID_WEIGHTS_URL
    assert FID_WEIGHTS_URL.endswith("/" + inception.WEIGHTS_FILENAME)


def test_verify_weights_checks_the_prefix_in_the_name(tmp_path):
    good = tmp_path / f"weights-{PREFIX}.pth"
    good.write_bytes(PAYLOAD)
    assert verify_weights(str(good)) == hashlib.sha256(PAYLOAD).hexdigest()
    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bad.write_bytes(PAYLOAD)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(InceptionWeightsCorrupt, match=exact(
            f"FID Inception weights at {bad} fail the integrity check: SHA-256 {digest[:16]}... does not start with "
            f"6726825d (the prefix in the file name). The file is corrupt or not pytorch-fid's; delete it and "
            f"download {inception.WEIGHTS_URL} again.")):
        verify_weights(str(bad))
    unnamed = tmp_path / "weights.pth"
    unnamed.write_bytes(PAYLOAD)
    with pytest.raises(InceptionWeightsCorrupt, match="no SHA-256 prefix"):
        verify_weights(str(unnamed))
    assert issubclass(InceptionWeightsCorrupt, ValueError)  # the command line reports it in one line


def test_corrupt_cached_weights_are_refused_before_use(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    os.makedirs(os.path.dirname(weights_path()))
    with open(weights_path(), "wb") as f:
        f.write(b"truncated")
    with pytest.raises(InceptionWeightsCorrupt) as info:
        load_inception("cpu", allow_download=False)
    assert weights_path() in str(info.value) and "delete it and download" in str(info.value)


def test_download_verifies_and_renames_into_place(tmp_path, server, capsys):
    path = tmp_path / "ckpt" / f"weights-{PREFIX}.pth"
    assert download_weights(str(path), f"{server}/good", timeout=5) == hashlib.sha256(PAYLOAD).hexdigest()
    assert path.read_bytes() == PAYLOAD and os.listdir(path.parent) == [path.name]
    out, err = capsys.readouterr()
    assert out == "" and "downloading" in err


def test_download_to_a_bare_file_name_writes_into_the_working_directory(tmp_path, server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    download_weights(f"weights-{PREFIX}.pth", f"{server}/good", timeout=5)
    assert os.listdir(tmp_path) == [f"weights-{PREFIX}.pth"]


@pytest.mark.parametrize("route, error, match", [
    ("/bad", InceptionWeightsCorrupt, "downloaded from http.*/bad fails the integrity check.*nothing was kept"),
    ("/missing", InceptionWeightsMissing, "download failed.*404"),
    ("/stall", InceptionWeightsMissing, "download failed.*timed out"),
])
def test_failed_download_leaves_nothing_behind(tmp_path, server, route, error, match):
    path = tmp_path / f"weights-{PREFIX}.pth"
    t0 = time.monotonic()
    with pytest.raises(error, match=match):
        download_weights(str(path), server + route, timeout=0.5)
    assert time.monotonic() - t0 < 8  # the read timeout ends the stalled transfer
    assert os.listdir(tmp_path) == []


def test_no_download_when_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(InceptionWeightsMissing, match="downloads disabled"):
        ensure_weights(allow_download=False)
    assert not os.path.exists(tmp_path / "hub")


def test_truncated_transfer_is_a_missing_weights_error(tmp_path):
    """A server that closes the connection before Content-Length bytes: no file, a clear error."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    path = tmp_path / f"weights-{PREFIX}.pth"
    with pytest.raises(InceptionWeightsMissing, match="download failed: the connection closed after 10 of 1000"):
        download_weights(str(path), f"http://127.0.0.1:{listener.getsockname()[1]}/w", timeout=5)
    thread.join(5)
    listener.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="timeout"):
        download_weights(str(path), "http://127.0.0.1:1/w", timeout=0)


def test_ensure_weights_downloads_once_into_the_hub_cache(tmp_path, server, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(inception, "WEIGHTS_FILENAME", f"weights-{PREFIX}.pth")
    monkeypatch.setattr(inception, "WEIGHTS_URL", f"{server}/good")
    path, digest = ensure_weights(allow_download=True, timeout=5)
    assert path == weights_path() and open(path, "rb").read() == PAYLOAD
    assert digest == hashlib.sha256(PAYLOAD).hexdigest()
    monkeypatch.setattr(inception, "WEIGHTS_URL", f"{server}/missing")  # a second call never downloads
    assert ensure_weights(allow_download=True, timeout=5) == (path, digest)


def test_fid_inception_built_from_the_verified_file(monkeypatch):
    """The network is built from the file ``ensure_weights`` verified (downloads allowed and a 30 s timeout by
    default), loaded on the CPU with ``weights_only=True``, handed to pytorch-fid's pool3 InceptionV3 (resize to
    299, input scaled to [-1, 1]) instead of its own download; the IS logits are that file's ``fc`` weight, no bias.
    pytorch-fid's network and the file are replaced by recording stand-ins."""
    import pytorch_fid.inception as pfi
    import torch
    from torch import nn

    calls = {}
    state = {"fc.weight": torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)), "fc.bias": None}

    def fake_ensure(allow_download=None, timeout=None):
        calls["ensure"] = (allow_download, timeout)
        return "/hub/checkpoints/weights-abcd1234.pth", "abcd1234" + "0" * 56

    def fake_load(path, map_location="missing", weights_only="missing"):
        calls["load"] = (path, map_location, weights_only)
        return state

    class FakeInceptionV3(nn.Module):
        BLOCK_INDEX_BY_DIM = pfi.InceptionV3.BLOCK_INDEX_BY_DIM

        def __init__(self, *args, **kwargs):
            super().__init__()
            calls["inception"] = (args, kwargs, pfi.load_state_dict_from_url("the release URL"))

    monkeypatch.setattr(inception, "ensure_weights", fake_ensure)
    monkeypatch.setattr(torch, "load", fake_load)
    monkeypatch.setattr(pfi, "InceptionV3", FakeInceptionV3)
    net = inception.FIDInception()
    assert calls["ensure"] == (True, 30.0)
    assert calls["load"] == ("/hub/checkpoints/weights-abcd1234.pth", "cpu", True)
    args, kwargs, handed = calls["inception"]
    assert args == ([3],) and kwargs == {"resize_input": True, "normalize_input": True} and handed is state
    assert net.weights_sha256 == "abcd1234" + "0" * 56 and net.fc.bias is None
    assert torch.equal(net.fc.weight, state["fc.weight"]) and not net.training
    inception.FIDInception(allow_download=False, timeout=2.5)
    assert calls["ensure"] == (False, 2.5)
    seen = []
    monkeypatch.setattr(inception, "FIDInception", lambda **kwargs: seen.append(kwargs) or nn.Identity())
    inception.load_inception("cpu")
    assert seen == [{"allow_download": True, "timeout": 30.0}]


def test_weights_file_name_without_a_hash_prefix_is_refused_in_full(tmp_path):
    unnamed = tmp_path / "weights.pth"
    unnamed.write_bytes(PAYLOAD)
    with pytest.raises(InceptionWeightsCorrupt, match=exact(
            "weights file name 'weights.pth' carries no SHA-256 prefix (expected '<name>-<hex prefix>.pth'); refusing "
            "unverifiable weights")):
        verify_weights(str(unnamed))


def test_ensure_weights_downloads_by_default_with_its_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seen = []
    monkeypatch.setattr(inception, "download_weights", lambda path, url=None, timeout=None: seen.append(
        (path, url, timeout)) or "digest")
    assert ensure_weights() == (weights_path(), "digest")
    assert ensure_weights(timeout=4.0) == (weights_path(), "digest")
    assert seen == [(weights_path(), None, 30.0), (weights_path(), None, 4.0)]
    with pytest.raises(InceptionWeightsMissing, match=rf"^FID Inception weights not found at .* \(downloads disabled\)\. "):
        ensure_weights(allow_download=False)


def test_download_reads_a_mebibyte_at_a_time_and_names_the_wrong_digest(tmp_path, monkeypatch):
    """More than one read's worth: every byte counted and hashed; a digest that does not match the name is
    quoted (its first 16 hex digits) in full in the error."""
    payload = bytes(range(256)) * 4097  # 1 MiB + 256 bytes
    reads = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

        def read(self, size=-1):
            reads.append(size)
            return super().read(size)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(payload))
    digest = hashlib.sha256(payload).hexdigest()
    path = tmp_path / f"weights-{digest[:8]}.pth"
    assert download_weights(str(path), "http://host/w", timeout=5) == digest
    assert path.read_bytes() == payload and reads == [1 << 20] * 3
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    with pytest.raises(InceptionWeightsCorrupt, match=exact(
            f"the file downloaded from http://host/w fails the integrity check: SHA-256 {digest[:16]}... does not "
            f"start with {wrong} (the prefix in the name weights-{wrong}.pth); nothing was kept")):
        download_weights(str(tmp_path / f"weights-{wrong}.pth"), "http://host/w", timeout=5)


def test_load_inception_puts_the_network_on_the_given_or_default_device(monkeypatch):
    monkeypatch.setattr(inception, "FIDInception", lambda **kwargs: torch.nn.Linear(1, 1))
    assert inception.load_inception("meta").weight.device.type == "meta"
    assert inception.load_inception(torch.device("meta")).weight.device.type == "meta"
    assert inception.load_inception().weight.device == inception.default_device()
