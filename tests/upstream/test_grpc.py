"""gRPC end to end through the proxy: a real grpcio client speaks h2c (prior knowledge)
to a reverse listener, the proxy speaks HTTP/2 to a real grpcio server as an `h2c://`
upstream. Unary calls, interleaved bidirectional streams, error statuses in trailers."""
from __future__ import annotations

import threading
from concurrent import futures

import pytest

grpc = pytest.importorskip("grpc", reason="grpcio is not installed")

SERVICE = "fastproxy.test.Echo"


def _unary(request: bytes, context) -> bytes:
    if request.startswith(b"missing:"):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such key: " + request[8:].decode())
    context.set_trailing_metadata((("x-served-by", "grpc-origin"),))
    return b"echo:" + request


def _chat(requests, context):
    # One answer per message, sent before the next message is read: the client only
    # sends its next message after reading this answer, so the stream is interleaved.
    for i, msg in enumerate(requests):
        yield b"%d:" % i + msg[::-1]


def _ident(b: bytes) -> bytes:
    return b


@pytest.fixture
def grpc_origin():
    """A grpcio server on loopback with the Echo service (generic handlers, bytes)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, _ident, _ident),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat, _ident, _ident),
    })
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


@pytest.fixture
def channel(start_proxy, grpc_origin):
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", f"h2c://127.0.0.1:{grpc_origin}")
    ch = grpc.insecure_channel(f"127.0.0.1:{p.port}")
    grpc.channel_ready_future(ch).result(timeout=10)
    yield ch
    ch.close()


def _stubs(ch):
    unary = ch.unary_unary(f"/{SERVICE}/Unary", request_serializer=_ident,
                           response_deserializer=_ident)
    chat = ch.stream_stream(f"/{SERVICE}/Chat", request_serializer=_ident,
                            response_deserializer=_ident)
    return unary, chat


def test_grpc_unary_through_proxy(channel):
    unary, _ = _stubs(channel)
    resp, call = unary.with_call(b"hello", timeout=10)
    assert resp == b"echo:hello"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-served-by", "grpc-origin") in tuple(call.trailing_metadata())
    big = bytes(range(256)) * 1000          # 256 KB: past the initial 64 KB windows
    assert unary(big, timeout=10) == b"echo:" + big


def test_grpc_error_status_reaches_client(channel):
    unary, _ = _stubs(channel)
    with pytest.raises(grpc.RpcError) as info:
        unary(b"missing:k42", timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such key: k42"


def test_grpc_bidi_stream_interleaved(channel):
    _, chat = _stubs(channel)
    outbox: list[bytes | None] = []
    ready = threading.Condition()

    def requests():
        # Each message waits for the answer to the one before: a proxy that buffers
        # either direction until the stream ends would hang here (bounded by the timeout).
        for i in range(5):
            with ready:
                ready.wait_for(lambda: len(outbox) >= i, timeout=10)
                if len(outbox) < i:
                    return
            yield b"msg-%d" % i

    call = chat(requests(), timeout=15)
    got = []
    for resp in call:
        got.append(resp)
        with ready:
            outbox.append(resp)
            ready.notify_all()
    assert got == [b"%d:" % i + (b"msg-%d" % i)[::-1] for i in range(5)]
    assert call.code() == grpc.StatusCode.OK


def test_grpc_many_calls_share_proxy(channel):
    unary, chat = _stubs(channel)
    results = []

    def one(i):
        results.append(unary(b"n%d" % i, timeout=10))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sorted(results) == sorted(b"echo:n%d" % i for i in range(20))


def test_grpc_over_tls_upstream_by_alpn(run_proxy, tmp_path):
    """The same calls to a grpcio TLS server, reached as https:// with protocol = "auto"."""
    trustme = pytest.importorskip("trustme", reason="trustme is not installed")
    from conftest import reverse_config
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, _ident, _ident),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat, _ident, _ident),
    }),))
    creds = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        cfg = reverse_config(f"https://127.0.0.1:{port}")
        cfg["upstreams"]["app"].update(protocol="auto", tls={"ca": str(tmp_path / "ca.pem")})
        p = run_proxy(cfg)
        with grpc.insecure_channel(f"127.0.0.1:{p.port}") as ch:
            unary, chat = _stubs(ch)
            assert unary(b"tls", timeout=10) == b"echo:tls"
            with pytest.raises(grpc.RpcError) as info:
                unary(b"missing:x", timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            got = list(chat(iter([b"a", b"bc"]), timeout=10))
            assert got == [b"0:a", b"1:cb"]
    finally:
        server.stop(0)
