"""Interop over real sockets: a tiny asyncio HTTP/2 server built on fastproxy._h2 (a
test harness, not the proxy), hit by curl --http2-prior-knowledge, nghttp and h2load."""
import asyncio
import hashlib
import re
import shutil
import subprocess
import threading

import pytest

from fastproxy import _h2

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")


class EchoConnection(_h2.Connection):
    """GET /bytes/N answers N bytes; POST answers the sha256 of the body; trailers echoed."""

    def __init__(self, transport):
        super().__init__(False)
        self.transport = transport
        self.bodies = {}
        self.pending = {}          # stream -> (bytes not yet taken by send_data, end)

    def flush(self):
        out = self.data_to_send()
        if out:
            self.transport.write(out)

    def on_headers(self, sid, headers, end_stream):
        self.bodies[sid] = [dict(headers), hashlib.sha256(), 0]
        if end_stream:
            self.respond(sid)

    def on_data(self, sid, data, end_stream):
        entry = self.bodies[sid]
        entry[1].update(data)
        entry[2] += len(data)
        self.acknowledge_received(sid, len(data))     # consumed at once: credit back
        if end_stream:
            self.respond(sid)

    def on_trailers(self, sid, headers):
        self.bodies[sid][0].update({b"x-trailer-" + n: v for n, v in headers})
        self.respond(sid)

    def respond(self, sid):
        head, digest, n = self.bodies.pop(sid)
        path = head[b":path"]
        m = re.match(rb"/bytes/(\d+)", path)
        if m:
            body = bytes(range(256)) * (int(m.group(1)) // 256) + b"z" * (int(m.group(1)) % 256)
        elif head[b":method"] == b"POST":
            body = f"{n} {digest.hexdigest()}\n".encode()
        else:
            body = b"hello " + path + b"\n"
        extra = [(b"x-got-" + k[len(b"x-trailer-"):], v) for k, v in head.items() if k.startswith(b"x-trailer-")]
        self.send_headers(sid, [(b":status", b"200"), (b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/octet-stream")] + extra)
        self.pending[sid] = body
        self.push(sid)

    def push(self, sid):
        body = self.pending[sid]
        taken = self.send_data(sid, body, end_stream=True)
        if taken == len(body) or taken < 0:
            del self.pending[sid]
        else:
            self.pending[sid] = body[taken:]

    def on_window_open(self, sid):
        if sid in self.pending:
            self.push(sid)

    def on_reset(self, sid, code, remote):
        self.pending.pop(sid, None)
        self.bodies.pop(sid, None)


class Proto(asyncio.Protocol):
    def connection_made(self, transport):
        self.conn = EchoConnection(transport)
        self.conn.flush()

    def data_received(self, data):
        self.conn.feed(data)
        self.conn.flush()
        if self.conn.dead:
            self.conn.transport.close()


@pytest.fixture(scope="module")
def server():
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box = {}

    async def main():
        srv = await loop.create_server(Proto, "127.0.0.1", 0)
        box["port"] = srv.sockets[0].getsockname()[1]
        box["srv"] = srv
        started.set()

    t = threading.Thread(target=lambda: (loop.run_until_complete(main()), loop.run_forever()), daemon=True)
    t.start()
    assert started.wait(5)
    yield f"http://127.0.0.1:{box['port']}"
    loop.call_soon_threadsafe(box["srv"].close)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def curl(*args, data=None):
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "20", *args],
                       input=data, check=False, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_curl_get(server):
    out = curl("-i", server + "/hello?x=1")
    assert out.startswith(b"HTTP/2 200") and out.endswith(b"hello /hello?x=1\n")


def test_curl_large_download_respects_flow_control(server):
    """4 MiB through curl's windows: send_data is cut short and resumes on WINDOW_UPDATE."""
    body = curl(server + "/bytes/4194304")
    assert len(body) == 4194304 and body[:256] == bytes(range(256))


def test_curl_upload_credit_follows_acknowledgement(server):
    """3 MiB uploaded: far beyond the 64 KiB stream window, so WINDOW_UPDATE must flow."""
    payload = bytes(range(256)) * (3 * 4096)
    out = curl("--data-binary", "@-", "-H", "content-type: application/octet-stream", server + "/up",
               data=payload)
    assert out == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()


@pytest.mark.skipif(not shutil.which("nghttp"), reason="nghttp (nghttp2-client) is not installed")
def test_nghttp_concurrent_streams_and_trailers(server):
    r = subprocess.run(["nghttp", "-n", "-s", "-t", "20", server + "/a", server + "/bytes/100000",
                        server + "/c"], check=False, capture_output=True, timeout=30, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
    rows = re.findall(r"^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d{3})\s+(\S+)\s+(\S+)$", r.stdout, re.MULTILINE)
    assert sorted(rows) == [("200", "9", "/a"), ("200", "9", "/c"), ("200", "97K", "/bytes/100000")]
    r = subprocess.run(["nghttp", "-v", "--trailer", "x-sum: 42", "-d", "-", server + "/t"],
                       input="abc", check=False, capture_output=True, timeout=30, text=True)
    assert r.returncode == 0, r.stderr
    assert "x-got-x-sum: 42" in r.stdout and "3 ba7816bf" in r.stdout


@pytest.mark.skipif(not shutil.which("h2load"), reason="h2load (nghttp2-client) is not installed")
def test_h2load_many_streams_per_connection(server):
    r = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "32", server + "/x"],
                       check=False, capture_output=True, timeout=60, text=True)
    assert r.returncode == 0, r.stderr
    assert "2000 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout
