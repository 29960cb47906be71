"""RFC 9111 behaviour found missing by an outside conformance probe (probe4), over real sockets.

The proxy runs as a subprocess (reverse mode, a cache) in front of a scripted origin:
each path answers from a list of raw responses, the last one repeating, and counts the
requests that reached it, so "reused" means the origin saw one request.
"""
from __future__ import annotations

import email.utils
import threading
import time

import pytest

from conftest import reverse_config
from wire import Conn, RawServer


def http_date(offset: float = 0.0) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


class Script:
    """A scripted origin: `answers[path]` is a list of responses (head lines, body), or of
    functions of the request head that return one."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[list[str], bytes]]] = {}
        self.seen: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self.server = RawServer(self._serve)
        self.url = self.server.url

    def _serve(self, server, s) -> None:
        rest = b""
        while True:
            head, rest = server.read_until(s, b"\r\n\r\n", rest)
            target = head.split(b" ", 2)[1].decode()
            with self._lock:
                seen = self.seen.setdefault(target, [])
                seen.append(head)
                answers = self.answers[target]
                answer = answers[min(len(seen), len(answers)) - 1]
            lines, body = answer(head) if callable(answer) else answer
            status = lines[0]
            out = status + "\r\nDate: " + http_date() + "\r\n"
            out += "".join(line + "\r\n" for line in lines[1:])
            if not status.endswith("304 Not Modified"):
                out += "Content-Length: %d\r\n" % len(body)
            s.sendall(out.encode("latin-1") + b"\r\n" + (b"" if head.startswith(b"HEAD") else body))

    def count(self, target: str) -> int:
        return len(self.seen.get(target, ()))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def script():
    s = Script()
    yield s
    s.close()


@pytest.fixture
def cached(run_proxy, script):
    """The proxy with a 16 MiB cache in front of the scripted origin."""
    return run_proxy(reverse_config(script.url, cache={"size": "16MiB"}))


def fetch(proxy, target: str, *headers: str, method: str = "GET"):
    with Conn(proxy.port) as c:
        c.send(("%s %s HTTP/1.1\r\nHost: h\r\n%s\r\n" % (
            method, target, "".join(h + "\r\n" for h in headers))).encode("latin-1"))
        return c.response(method)


# -- Qualified private / no-cache: the listed fields are withheld, the rest is shared ------

@pytest.mark.parametrize("cc", ['max-age=3600, private="X-User, X-Other"',
                                'max-age=3600, no-cache="X-User"',
                                "max-age=3600, no-cache=X-User"])
def test_fields_named_by_private_or_no_cache_are_withheld_and_the_rest_reused(cached, script, cc):
    """RFC 9111 5.2.2.7: a shared cache MUST NOT store the fields a qualified `private`
    lists and MAY store the rest; 5.2.2.4: the fields a qualified `no-cache` lists MUST NOT
    be sent without validation (the token form is accepted too: 5.2). Both were read as
    their unqualified forms: not stored at all, or revalidated on every request."""
    script.answers["/q"] = [(["HTTP/1.1 200 OK", "Cache-Control: " + cc, "X-User: alice",
                              "X-Shared: yes"], b"page")]
    first = fetch(cached, "/q")
    assert first.getheader("X-User") == "alice", "the miss is the origin's own answer"
    again = fetch(cached, "/q")
    assert script.count("/q") == 1, "the response was not reused (stored or validated anyway)"
    assert again.body == b"page" and again.getheader("X-Shared") == "yes"
    assert again.getheader("X-User") is None, "a withheld field went out of the cache"


def test_no_cache_naming_set_cookie_stores_the_response_without_the_cookie(cached, script):
    """RFC 9111 5.2.2.4: `no-cache="Set-Cookie"` is the origin's way to share a response
    whose cookie belongs to one client: the rest is stored and reused, the cookie is not."""
    script.answers["/c"] = [(["HTTP/1.1 200 OK", 'Cache-Control: max-age=3600, no-cache="Set-Cookie"',
                              "Set-Cookie: sid=alice"], b"page")]
    assert fetch(cached, "/c").getheader("Set-Cookie") == "sid=alice"
    again = fetch(cached, "/c")
    assert script.count("/c") == 1 and again.getheader("Set-Cookie") is None


def test_a_304_does_not_bring_back_a_withheld_field(cached, script):
    """RFC 9111 5.2.2.7 and 4.3.4: the stored response updated by a 304 still withholds
    the fields its (updated) `private` lists."""
    cc = 'Cache-Control: max-age=1, private="X-User"'
    script.answers["/r"] = [(["HTTP/1.1 200 OK", cc, 'ETag: "v1"', "X-User: alice"], b"page"),
                            (["HTTP/1.1 304 Not Modified", cc, 'ETag: "v1"', "X-User: bob"], b"")]
    fetch(cached, "/r")
    time.sleep(1.5)
    fetch(cached, "/r")           # stale: validated, the 304 refreshes the entry
    assert script.count("/r") == 2
    again = fetch(cached, "/r")
    assert script.count("/r") == 2, "the refreshed entry was not reused"
    assert again.getheader("X-User") is None, "the 304's withheld field was stored"


@pytest.mark.parametrize("cc", ['max-age=3600, private="X User"', 'max-age=3600, private=""'])
def test_private_whose_argument_is_not_field_names_is_unqualified(cached, script, cc):
    """RFC 9111 5.2.2.7: an argument that is not a list of field names cannot say what to
    withhold; the directive is read as unqualified private (not stored), the safe reading."""
    script.answers["/p"] = [(["HTTP/1.1 200 OK", "Cache-Control: " + cc, "X-User: alice"], b"page")]
    fetch(cached, "/p")
    fetch(cached, "/p")
    assert script.count("/p") == 2


# -- max-stale ----------------------------------------------------------------------------

def test_max_stale_is_served_from_an_entry_without_validators(cached, script):
    """RFC 9111 5.2.1.2: max-stale lets a request take a stale response. An entry without
    ETag or Last-Modified left the store the moment it went stale (keep_stale defaulted to
    0), so max-stale could only ever reach entries that had validators."""
    script.answers["/m"] = [(["HTTP/1.1 200 OK", "Cache-Control: max-age=1"], b"old")]
    fetch(cached, "/m")
    time.sleep(2.2)
    r = fetch(cached, "/m", "Cache-Control: max-stale=100")
    assert script.count("/m") == 1, "the stale entry was gone"
    assert r.body == b"old" and "max-stale" in r.getheader("Cache-Status"), r.getheaders()
    assert int(r.getheader("Age")) >= 2, "a stale answer must carry its age"
    fetch(cached, "/m")
    assert script.count("/m") == 2, "without max-stale a stale entry was served"


# -- Trailer is end-to-end ----------------------------------------------------------------

def test_trailer_field_is_relayed_and_stored(cached, script):
    """RFC 9110 6.6.2 and 7.6.1: Trailer is not a hop-by-hop field (RFC 2616 13.5.1 listed
    it; RFC 7230 and 9110 do not), so a proxy passes it on and RFC 9111 3.1 lets a cache
    store it. It was dropped from relayed and stored responses alike."""
    script.answers["/t"] = [(["HTTP/1.1 200 OK", "Cache-Control: max-age=3600",
                              "Trailer: Server-Timing"], b"page")]
    first = fetch(cached, "/t")
    assert first.getheader("Trailer") == "Server-Timing", first.getheaders()
    hit = fetch(cached, "/t")
    assert script.count("/t") == 1
    assert hit.getheader("Trailer") == "Server-Timing", hit.getheaders()


# -- 304 updates the stored fields ----------------------------------------------------------

def test_a_304_updates_content_type_but_not_content_length(cached, script):
    """RFC 9111 3.2 / 4.3.4: the cache MUST replace stored fields with the 304's, except
    Content-Length and the fields its stored bytes depend on. This cache stores the bytes
    as received, so Content-Type is not such a field; it was kept as first stored."""
    script.answers["/u"] = [
        (["HTTP/1.1 200 OK", "Cache-Control: max-age=1", 'ETag: "v1"', "Content-Type: text/plain",
          "X-Version: 1"], b"page"),
        (["HTTP/1.1 304 Not Modified", "Cache-Control: max-age=3600", 'ETag: "v1"',
          "Content-Type: text/plain; charset=utf-8", "X-Version: 2", "Content-Length: 99"], b"")]
    fetch(cached, "/u")
    time.sleep(1.5)
    fetch(cached, "/u")
    r = fetch(cached, "/u")
    assert script.count("/u") == 2
    assert r.getheader("X-Version") == "2"
    assert r.getheader("Content-Type") == "text/plain; charset=utf-8", r.getheaders()
    assert r.getheader("Content-Length") == "4" and r.body == b"page"


# -- a fleet peer's hop keeps what the asking node wrote about the client -------------------

def _send_from(source: str, port: int, raw: bytes):
    import socket
    import http.client
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    try:
        s.sendall(raw)
        r = http.client.HTTPResponse(s)
        r.begin()
        r.read()
        return r
    finally:
        s.close()


@pytest.mark.parametrize("forwarded", ["x-forwarded", "forwarded"])
def test_a_peer_hop_passes_the_client_and_scheme_the_asking_node_saw(run_proxy, script,
                                                                      forwarded):
    """RFC 7239 4 / X-Forwarded-*: the owner of a key fetched it for the asking node's
    client, so the origin must see that client and its scheme. The owner replaced them
    with its own view (the asking node's address, `proto=http` from its plain peer
    listener): an https request reached the origin as http. Trusted only from a configured
    peer's address with the hop field; anyone else's claims are still replaced."""
    from redis_server import free_port
    port = free_port()
    me, other = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"
    proxy = run_proxy({"listeners": [{"listen": f"127.0.0.1:{port}", "upstream": "app"}],
                       "upstreams": {"app": {"servers": [script.url]}},
                       "cache": {"size": "16MiB"}, "headers": {"forwarded": forwarded},
                       "cluster": {"peers": [me, other], "self": me}})
    claims = (b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
              b"X-Forwarded-Host: www.example\r\n" if forwarded == "x-forwarded" else
              b'Forwarded: for=203.0.113.7;proto=https;host="www.example"\r\n')
    script.answers["/f"] = [(["HTTP/1.1 200 OK", "Cache-Control: no-store"], b"ok")]
    hop = b"Fastproxy-Hop: " + other.encode() + b"\r\n"
    for source, extra, trusted in (("127.0.0.1", hop, True), ("127.0.0.2", hop, False),
                                   ("127.0.0.1", b"", False)):
        r = _send_from(source, proxy.port, b"GET /f HTTP/1.1\r\nHost: www.example\r\n"
                       + claims + extra + b"\r\n")
        assert r.status == 200
        seen = script.seen["/f"][-1].lower()
        assert b"fastproxy-hop" not in seen
        if forwarded == "x-forwarded":
            if trusted:
                assert b"\r\nx-forwarded-for: 203.0.113.7\r\n" in seen, seen
                assert b"\r\nx-forwarded-proto: https\r\n" in seen, seen
            else:
                assert b"\r\nx-forwarded-proto: http\r\n" in seen, (source, seen)
                assert b"x-forwarded-for: 203.0.113.7, " + source.encode() in seen, seen
        else:
            elements = [line for line in seen.split(b"\r\n") if line.startswith(b"forwarded:")]
            if trusted:
                assert elements == [b'forwarded: for=203.0.113.7;proto=https;host="www.example"'], seen
            else:
                assert b"for=" + source.encode() + b";proto=http" in elements[-1], (source, seen)


def test_a_peer_hop_is_keyed_by_the_scheme_its_client_used(run_proxy, script):
    """RFC 9111 2 with RFC 9110 4.2: the cache key is the target URI, scheme included. The
    owner of a key keyed every peer's request with its own plain listener's scheme, so an
    https client's request asked through a peer was answered with the http entry (here the
    origin's redirect to https: a loop for the https client), and the reverse."""
    from redis_server import free_port
    port = free_port()
    me, other = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"
    proxy = run_proxy({"listeners": [{"listen": f"127.0.0.1:{port}", "upstream": "app"}],
                       "upstreams": {"app": {"servers": [script.url]}},
                       "cache": {"size": "16MiB"},
                       "cluster": {"peers": [me, other], "self": me}})

    def by_scheme(head):
        if b"\r\nx-forwarded-proto: https\r\n" in head.lower():
            return ["HTTP/1.1 200 OK", "Cache-Control: max-age=3600"], b"secure page"
        return (["HTTP/1.1 301 Moved Permanently", "Cache-Control: max-age=3600",
                 "Location: https://www.example/s"], b"")
    script.answers["/s"] = [by_scheme]
    plain = b"GET /s HTTP/1.1\r\nHost: www.example\r\n\r\n"
    hop = (b"GET /s HTTP/1.1\r\nHost: www.example\r\nX-Forwarded-For: 203.0.113.7\r\n"
           b"X-Forwarded-Proto: https\r\nFastproxy-Hop: " + other.encode()
           + b"; proto=https\r\n\r\n")
    assert _send_from("127.0.0.1", proxy.port, plain).status == 301
    for _ in range(2):   # a miss, then a hit (answered by Python: the hop is never compiled)
        r = _send_from("127.0.0.1", proxy.port, hop)
        assert r.status == 200, "the https client got the http entry"
    assert _send_from("127.0.0.1", proxy.port, plain).status == 301
    assert script.count("/s") == 2, "each scheme's entry fetched once, then reused"


# -- a HEAD's 200 freshens or drops the stored GET response ---------------------------------

def test_a_head_response_freshens_the_stored_get_response(cached, script):
    """RFC 9111 4.3.5: a 200 to a HEAD the cache sent for a stored GET response, with
    matching validators and Content-Length, updates the stored response's fields. The
    stored response stayed stale: the next GET went to the origin again."""
    script.answers["/h"] = [
        (["HTTP/1.1 200 OK", "Cache-Control: max-age=1", 'ETag: "v1"', "X-Version: 1"], b"body"),
        (["HTTP/1.1 200 OK", "Cache-Control: max-age=3600", 'ETag: "v1"', "X-Version: 2"], b"body")]
    fetch(cached, "/h")
    time.sleep(1.5)
    head = fetch(cached, "/h", method="HEAD")
    assert head.status == 200 and script.count("/h") == 2
    assert script.seen["/h"][-1].startswith(b"HEAD ")
    r = fetch(cached, "/h")
    assert script.count("/h") == 2, "the GET after a matching HEAD went upstream"
    assert r.body == b"body" and r.getheader("X-Version") == "2", r.getheaders()


def test_a_head_response_with_other_validators_drops_the_stored_response(cached, script):
    """RFC 9111 4.3.5: when the HEAD's validators differ from the stored response's, that
    response is out of date (SHOULD be considered stale). It went on being served fresh."""
    script.answers["/d"] = [
        (["HTTP/1.1 200 OK", "Cache-Control: max-age=3600", 'ETag: "v1"'], b"old!"),
        (["HTTP/1.1 200 OK", "Cache-Control: max-age=3600", 'ETag: "v2"'], b"new!")]
    fetch(cached, "/d")
    assert fetch(cached, "/d", "Cache-Control: no-cache", method="HEAD").getheader("ETag") == '"v2"'
    r = fetch(cached, "/d")
    assert r.body == b"new!", "the GET after the HEAD got the outdated stored response"
    assert script.count("/d") == 3
