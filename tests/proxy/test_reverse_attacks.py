"""The outside attack probe, reverse mode and the cache, over real sockets: request fields
by which a client could choose what the application believes (scheme, port, URL, method)
or what the cache hands to everyone else."""
import json

import pytest

from h2_client import Client
from wire import exchange

# Fields a framework behind a trusted proxy reads as the proxy's word (relay_fastpath.pxi
# URL_CLAIMS), in both spellings CGI maps to one name.
URL_CLAIMS = ["X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Scheme", "X-Forwarded-Ssl",
              "Front-End-Https", "X-Url-Scheme", "X-Original-URL", "X-Rewrite-URL",
              "X_Forwarded_Port", "X_Original_URL"]


def claims_head() -> str:
    return "".join(f"{name}: /admin\r\n" for name in URL_CLAIMS)


def names_seen(origin) -> set[str]:
    return {n.decode().lower() for n, _v in origin.requests[-1][2]}


@pytest.mark.parametrize("cache", [False, True], ids=["compiled-path", "cache-path"])
def test_client_url_claims_never_reach_the_origin(run_proxy, origin, cache):
    config = {"listeners": [{"upstream": "app"}], "upstreams": {"app": {"servers": [origin.url]}}}
    if cache:
        config["cache"] = {"size": "32MiB"}
    proxy = run_proxy(config)
    answer = exchange(proxy.port, (f"GET /echo HTTP/1.1\r\nHost: a\r\n{claims_head()}"
                                   "Connection: close\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    leaked = names_seen(origin) & {n.lower() for n in URL_CLAIMS}
    assert not leaked, f"the client chose these for the application: {leaked}"
    # The fields this hop writes itself are there, with its own values.
    sent = json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]
    assert ["X-Forwarded-Proto", "http"] in sent


def test_client_url_claims_never_reach_the_origin_over_h2(run_proxy, origin):
    proxy = run_proxy({"listeners": [{"upstream": "app"}],
                       "upstreams": {"app": {"servers": [origin.url]}}})
    client = Client(proxy.port)
    try:
        status, _h, _b = client.get("/echo", extra=[(n.lower(), "/admin") for n in URL_CLAIMS])
    finally:
        client.close()
    assert status == 200
    leaked = names_seen(origin) & {n.lower() for n in URL_CLAIMS}
    assert not leaked, f"the client chose these for the application: {leaked}"


def test_a_listener_behind_another_proxy_still_passes_them(run_proxy, origin):
    # forwarded = "none": the proxy in front wrote them, and the application needs them.
    proxy = run_proxy({"listeners": [{"upstream": "app"}], "headers": {"forwarded": "none"},
                       "upstreams": {"app": {"servers": [origin.url]}}})
    exchange(proxy.port, (f"GET /echo HTTP/1.1\r\nHost: a\r\n{claims_head()}"
                          "Connection: close\r\n\r\n").encode())
    assert {n.lower() for n in URL_CLAIMS} <= names_seen(origin)


def get(port: int, target: str, extra: str = "") -> bytes:
    return exchange(port, f"GET {target} HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n".encode())


@pytest.mark.parametrize("field", ["X-HTTP-Method-Override: DELETE", "X-HTTP-Method: POST",
                                   "X-Method-Override: PUT", "X_HTTP_Method_Override: DELETE"])
def test_a_method_override_answer_is_not_stored_for_everyone(run_proxy, origin, field):
    # CPDoS "HMO": the origin answers the overridden method (often 404/405, cacheable by
    # default); stored under the URL, that answer would be everyone's for the page.
    proxy = run_proxy({"listeners": [{"upstream": "app"}], "cache": {"size": "32MiB"},
                       "upstreams": {"app": {"servers": [origin.url]}}})
    target = "/c/page?cc=max-age%3D60"
    first = get(proxy.port, target, field + "\r\n")
    assert first.startswith(b"HTTP/1.1 200 "), first[:200]
    second = get(proxy.port, target)
    assert second.endswith(b"#2\n"), f"the overridden request's answer was served: {second!r}"
    assert origin.count(target) == 2
    third = get(proxy.port, target)
    assert third.endswith(b"#2\n"), "a plain GET's answer is stored as before"


@pytest.mark.parametrize("field", ["X-Original-URL: /admin", "X-Rewrite-URL: /admin"])
def test_a_url_override_answer_is_not_stored_by_a_forward_cache(start_proxy, origin, tmp_path, field):
    # A forward proxy passes the client's fields on: its cache must not keep what one
    # client had the destination serve under another URL.
    cfg = tmp_path / "fwd.toml"
    cfg.write_text('[cache]\nsize = "32MiB"\n[[listeners]]\nlisten = "127.0.0.1:0"\n'
                   'mode = "forward"\nallow_private = true\n')
    proxy = start_proxy("serve", "--config", str(cfg))
    target = f"{origin.url}/c/fwd?cc=max-age%3D60"
    first = get(proxy.port, target, field + "\r\n")
    assert first.startswith(b"HTTP/1.1 200 "), first[:200]
    second = get(proxy.port, target)
    assert second.endswith(b"#2\n"), f"the overriding request's answer was served: {second!r}"
