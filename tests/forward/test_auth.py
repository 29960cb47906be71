"""Proxy authentication: hash format, Basic parsing, caching, off-loop verification, and real
clients (curl, urllib, requests) sending their Proxy-Authorization to a loopback listener."""
import asyncio
import base64
import re
import shutil
import subprocess
import threading
import unicodedata
import urllib.error
import urllib.request

import pytest
import requests
import uvloop

from fastproxy.forward.auth import (
    BAD_SCHEME, DEFAULT_N, MALFORMED, MISSING, AuthConfig, Authenticator, challenge_header,
    hash_password, parse_basic, parse_hash, verify_password,
)

FAST = dict(n=2 ** 10)  # cheap parameters for tests; the default cost is tested once


def basic(user: str, password: str, encoding="utf-8") -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode(encoding))


class Clock:
    def __init__(self):
        self.now = 50.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def users():
    return {"alice": hash_password("wonder land", **FAST),
            "bob": hash_password("pässwörd", **FAST),
            "carol": hash_password("a:b:c", **FAST)}


# --- hashes ---------------------------------------------------------------------------

def test_hash_format_round_trip_with_default_cost():
    encoded = hash_password("correct horse")
    m = re.fullmatch(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", encoded)
    assert m, encoded
    assert (int(m[1]), int(m[2]), int(m[3])) == (DEFAULT_N, 8, 1)
    parsed = parse_hash(encoded)
    assert len(parsed.salt) == 16 and len(parsed.digest) == 32
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsE", encoded)


def test_salts_are_per_hash():
    a, b = hash_password("same", **FAST), hash_password("same", **FAST)
    assert a != b and a.split("$")[4] != b.split("$")[4]
    assert verify_password("same", a) and verify_password("same", b)


def test_parameters_travel_in_the_hash():
    encoded = hash_password("pw", n=2 ** 11, r=4, p=2)
    assert encoded.startswith("scrypt$2048$4$2$")
    assert verify_password("pw", encoded)


def test_unicode_passwords_compare_in_nfc():
    composed = unicodedata.normalize("NFC", "café")
    decomposed = unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    assert verify_password(decomposed, hash_password(composed, **FAST))


@pytest.mark.parametrize("encoded, message", [
    ("hunter2", "plain-text passwords are not accepted"),
    ("scrypt$1024$8$1$abc", "expected scrypt"),
    ("scrypt$1024$8$1$!!!!$AAAA", "base64"),
    ("scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44, "power of two"),
    ("scrypt$1048576$64$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44, "r must be"),
    ("scrypt$1048576$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44, "MiB"),
    ("scrypt$01024$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44, "decimal"),
    ("scrypt$1024$8$1$AAAA$" + "A" * 44, "salt shorter"),
    ("scrypt$1024$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA", "16-64 bytes"),
])
def test_parse_hash_errors(encoded, message):
    with pytest.raises(ValueError, match=message):
        parse_hash(encoded)


def test_hash_password_refuses_empty_and_bad_parameters():
    with pytest.raises(ValueError, match="password"):
        hash_password("")
    with pytest.raises(ValueError, match="power of two"):
        hash_password("x", n=1000)


# --- Basic credentials -----------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (basic("alice", "secret"), ("alice", "secret")),
    (b"basic " + base64.b64encode(b"alice:secret"), ("alice", "secret")),   # scheme is case-insensitive
    (b"BASIC   " + base64.b64encode(b"alice:secret"), ("alice", "secret")),
    ("Basic " + base64.b64encode(b"alice:secret").decode(), ("alice", "secret")),
    (basic("carol", "a:b:c"), ("carol", "a:b:c")),                          # split at the first colon
    (basic("alice", ""), ("alice", "")),
    (basic("bob", "pässwörd"), ("bob", "pässwörd")),
    (basic("bob", "pässwörd", "latin-1"), ("bob", "pässwörd")),             # pre-RFC 7617 clients
])
def test_parse_basic(value, expected):
    assert parse_basic(value) == expected


@pytest.mark.parametrize("value, result", [
    (None, MISSING),
    (b"", MISSING),
    (b"Digest username=\"alice\"", BAD_SCHEME),
    (b"Bearer abc", BAD_SCHEME),
    (b"Basic", MALFORMED),
    (b"Basic !!!!", MALFORMED),
    (b"Basic YWxpY2U=", MALFORMED),                                 # "alice": no colon
    (b"Basic " + base64.b64encode(b":secret"), MALFORMED),          # empty user-id
    (b"Basic " + base64.b64encode(b"al\x00ice:x"), MALFORMED),      # control character
    (b"Basic " + base64.b64encode(b"alice:x\ny"), MALFORMED),
    (b"Basic YWxpY2U6c2VjcmU", MALFORMED),                           # "alice:secre", padding missing
    (b"Basic " + b"A" * 5000, MALFORMED),                           # oversize
    ("Basic ünicode", MALFORMED),
])
def test_parse_basic_failures(value, result):
    assert parse_basic(value) is result


def test_challenge_header():
    assert challenge_header("fastproxy") == \
        b'Proxy-Authenticate: Basic realm="fastproxy", charset="UTF-8"\r\n'
    assert challenge_header('a "quoted" \\ realm') == \
        b'Proxy-Authenticate: Basic realm="a \\"quoted\\" \\\\ realm", charset="UTF-8"\r\n'


# --- the authenticator -------------------------------------------------------------------

def test_good_bad_and_malformed(users):
    auth = Authenticator(AuthConfig(users=users))
    good = auth.verify(basic("alice", "wonder land"))
    assert good.ok and good.user == "alice"
    bad = auth.verify(basic("alice", "wonderland"))
    assert not bad.ok and bad.user is None and "wrong password" in bad.reason
    assert not auth.verify(basic("mallory", "x")).ok
    assert auth.verify(b"Basic !!") is MALFORMED
    assert auth.verify(None) is MISSING
    assert auth.verify(basic("bob", "pässwörd")).user == "bob"
    assert auth.verify(basic("bob", "pässwörd", "latin-1")).user == "bob"
    assert auth.verify(basic("carol", "a:b:c")).user == "carol"
    assert auth.challenge.startswith(b"Proxy-Authenticate: Basic realm=")


def test_unknown_user_costs_a_scrypt_too(users):
    auth = Authenticator(AuthConfig(users=users))
    auth.verify(basic("nobody", "x"))
    assert auth.verifications == 1  # same work as a real user: no timing oracle for names


def test_malformed_headers_never_run_scrypt(users):
    auth = Authenticator(AuthConfig(users=users))
    for value in (None, b"Basic !!", b"Digest x", b"Basic YWxpY2U="):
        assert auth.check_cached(value) is not None
        assert not auth.verify(value).ok
    assert auth.verifications == 0


def test_success_is_cached_until_the_ttl(users):
    clock = Clock()
    auth = Authenticator(AuthConfig(users=users, cache_ttl=30), clock=clock)
    value = basic("alice", "wonder land")
    assert auth.check_cached(value) is None
    assert auth.verify(value).ok
    for _ in range(5):
        assert auth.check_cached(value).ok
        assert auth.verify(value).ok
    assert auth.verifications == 1
    clock.now += 30.1
    assert auth.check_cached(value) is None
    assert auth.verify(value).ok and auth.verifications == 2


def test_failures_are_cached_separately_and_briefly(users):
    clock = Clock()
    auth = Authenticator(AuthConfig(users=users, fail_ttl=5, cache_max=2), clock=clock)
    good = basic("alice", "wonder land")
    auth.verify(good)
    for i in range(10):  # a flood of distinct bad guesses
        assert not auth.verify(basic("alice", f"guess{i}")).ok
    assert auth.check_cached(good).ok   # not evicted by the failures
    assert len(auth._bad) <= 2
    bad = basic("alice", "guess9")
    n = auth.verifications
    assert not auth.verify(bad).ok and auth.verifications == n   # served from the cache
    clock.now += 5.1
    assert auth.check_cached(bad) is None


def test_zero_ttl_disables_the_cache(users):
    auth = Authenticator(AuthConfig(users=users, cache_ttl=0))
    value = basic("alice", "wonder land")
    auth.verify(value)
    auth.verify(value)
    assert auth.verifications == 2


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_verify_async_is_coalesced_and_off_the_loop(users, loop_factory):
    slow = {"dave": hash_password("pw", n=2 ** 14)}
    auth = Authenticator(AuthConfig(users=slow))
    value = basic("dave", "pw")

    async def main():
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.ensure_future(ticker())
        results = await asyncio.gather(*(auth.verify_async(value) for _ in range(8)))
        done = True
        await t
        return results, ticks

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        results, ticks = runner.run(main())
    assert all(r.ok and r.user == "dave" for r in results)
    assert auth.verifications == 1           # eight waiters, one scrypt
    assert ticks > 3                         # the loop kept running while scrypt did
    assert auth.check_cached(value).ok       # remembered on the loop thread


def test_verify_async_bounded_concurrency_completes(users):
    auth = Authenticator(AuthConfig(users=users, max_concurrent=1))

    async def main():
        return await asyncio.gather(
            auth.verify_async(basic("alice", "wonder land")),
            auth.verify_async(basic("bob", "pässwörd")),
            auth.verify_async(basic("alice", "nope")),
            auth.verify_async(b"Basic !!"))

    ok1, ok2, bad, malformed = asyncio.run(main())
    assert ok1.ok and ok2.ok and not bad.ok and malformed is MALFORMED
    assert auth.verifications == 3


# --- configuration ----------------------------------------------------------------------------

def test_plain_text_password_is_rejected_without_echoing_it():
    with pytest.raises(ValueError) as exc:
        AuthConfig(users={"alice": "hunter2"})
    message = str(exc.value)
    assert message.startswith("users.alice: ") and "hash-password" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("kwargs, message", [
    (dict(users={"a:b": "scrypt$x"}), r"^users\.a:b: "),
    (dict(users={"": "scrypt$x"}), r"^users\.: "),
    (dict(users="alice"), r"^users: "),
    (dict(realm="bad\nrealm"), r"^realm: "),
    (dict(cache_ttl=-1), r"^cache_ttl: "),
    (dict(fail_ttl="5"), r"^fail_ttl: "),
    (dict(cache_max=0), r"^cache_max: "),
    (dict(max_concurrent=True), r"^max_concurrent: "),
])
def test_config_errors_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AuthConfig(**kwargs)


def test_config_enabled_only_with_users(users):
    assert not AuthConfig().enabled
    assert AuthConfig(users=users).enabled


# --- real clients over loopback -------------------------------------------------------------

class AuthListener:
    """A loopback listener answering 407 or 200 through the Authenticator, as the proxy will."""

    def __init__(self, auth: Authenticator):
        self.auth = auth
        self.seen: list = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self):
        # Runner.close() cancels what is left, stops the executor threads verify_async used
        # and closes the loop: nothing is left for the garbage collector to finalise later.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._main())

    async def _main(self):
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        async with server:
            await self.stop.wait()

    async def _handle(self, reader, writer):
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                value = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, v = line.partition(b":")
                    if name.strip().lower() == b"proxy-authorization":
                        value = v.strip()
                result = self.auth.check_cached(value)
                if result is None:
                    result = await self.auth.verify_async(value)
                self.seen.append(result)
                if result.ok:
                    body = f"hello {result.user}".encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n" + self.auth.challenge
                                 + b"Content-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def listener(users):
    lst = AuthListener(Authenticator(AuthConfig(users=users)))
    yield lst
    lst.close()


def test_requests_client(listener):
    proxy = f"http://127.0.0.1:{listener.port}"
    url = "http://origin.example/"
    ok = requests.get(url, proxies={"http": proxy.replace("//", "//alice:wonder%20land@")}, timeout=10)
    assert ok.status_code == 200 and ok.text == "hello alice"
    # requests encodes credentials as ISO-8859-1; the latin-1 fallback accepts them.
    umlaut = requests.get(url, proxies={"http": proxy.replace("//", "//bob:p%C3%A4ssw%C3%B6rd@")},
                          timeout=10)
    assert umlaut.status_code == 200 and umlaut.text == "hello bob"
    wrong = requests.get(url, proxies={"http": proxy.replace("//", "//alice:nope@")}, timeout=10)
    assert wrong.status_code == 407
    assert wrong.headers["Proxy-Authenticate"] == 'Basic realm="fastproxy", charset="UTF-8"'
    none = requests.get(url, proxies={"http": proxy}, timeout=10)
    assert none.status_code == 407
    assert [r.ok for r in listener.seen] == [True, True, False, False]


def test_urllib_client(listener):
    handler = urllib.request.ProxyHandler(
        {"http": f"http://carol:a%3Ab%3Ac@127.0.0.1:{listener.port}"})
    with urllib.request.build_opener(handler).open("http://origin.example/", timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"hello carol"
    bad = urllib.request.ProxyHandler({"http": f"http://carol:abc@127.0.0.1:{listener.port}"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.build_opener(bad).open("http://origin.example/", timeout=10)
    assert exc.value.code == 407
    exc.value.close()  # the error carries the open response


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_client(listener):
    def curl(*args):
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "-x", f"http://127.0.0.1:{listener.port}", *args,
                              "http://origin.example/"], capture_output=True, timeout=20)
        return out.stdout.decode()
    assert curl("--proxy-user", "alice:wonder land") == "200"
    assert curl("--proxy-user", "bob:pässwörd") == "200"   # UTF-8 bytes from the command line
    assert curl("--proxy-user", "alice:wrong") == "407"
    assert curl() == "407"


def test_module_doc_toml_example_builds_the_config():
    import textwrap
    import tomllib
    import fastproxy.forward.auth as module
    doc = module.__doc__
    snippet = textwrap.dedent(doc[doc.index("::\n", doc.index("Configuration (")) + 3:])
    config = AuthConfig.from_table(tomllib.loads(snippet)["forward"]["auth"])
    assert verify_password("change me", dict(config.users)["alice"])


def test_from_table_reads_durations_and_names_unknown_keys():
    c = AuthConfig.from_table({"cache_ttl": "2m", "fail_ttl": "500ms"})
    assert (c.cache_ttl, c.fail_ttl) == (120.0, 0.5)
    with pytest.raises(ValueError, match=r"^password: unknown key"):
        AuthConfig.from_table({"password": "x"})
