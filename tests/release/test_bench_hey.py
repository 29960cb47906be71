"""The hey runs of the load benchmark (bench/hey.py): its summary parsed, and real runs on loopback.

The parser tests read summaries hey 0.1.4 printed on this machine (against nginx); the
live tests run hey for a second against the test origin and check what it reports
against what the origin saw.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from origin import Origin

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT))  # for `bench` only; fastproxy is already imported
from bench.hey import HeyError, parse_summary, run_hey  # noqa: E402
from bench.procs import free_port  # noqa: E402
from bench.tools import which  # noqa: E402

CLEAN = """
Summary:
  Total:\t2.0008 secs
  Slowest:\t0.0061 secs
  Fastest:\t0.0002 secs
  Average:\t0.0007 secs
  Requests/sec:\t12260.2250
  
  Total data:\t2453000 bytes
  Size/request:\t100 bytes

Response time histogram:
  0.000 [1]\t|
  0.001 [20819]\t|\u25a0\u25a0\u25a0\u25a0\u25a0\u25a0\u25a0\u25a0
  0.001 [3515]\t|\u25a0
  0.006 [8]\t|


Latency distribution:
  10% in 0.0005 secs
  25% in 0.0005 secs
  50% in 0.0006 secs
  75% in 0.0007 secs
  90% in 0.0008 secs
  95% in 0.0010 secs
  99% in 0.0013 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0001 secs, 0.0002 secs, 0.0061 secs
  DNS-lookup:\t0.0000 secs, 0.0000 secs, 0.0000 secs
  req write:\t0.0001 secs, 0.0000 secs, 0.0011 secs
  resp wait:\t0.0002 secs, 0.0000 secs, 0.0056 secs
  resp read:\t0.0002 secs, 0.0000 secs, 0.0012 secs

Status code distribution:
  [200]\t24530 responses



"""

MIXED = CLEAN.replace("  [200]\t24530 responses\n",
                      "  [200]\t24000 responses\n  [404]\t500 responses\n  [502]\t30 responses\n")

REFUSED = """
Summary:
  Total:\t1.0003 secs
  Slowest:\t0.0000 secs
  Fastest:\t0.0000 secs
  Average:\t NaN secs
  Requests/sec:\t51786.5191
  

Response time histogram:


Latency distribution:

Details (average, fastest, slowest):
  DNS+dialup:\t NaN secs, 0.0000 secs, 0.0000 secs
  DNS-lookup:\t NaN secs, 0.0000 secs, 0.0000 secs
  req write:\t NaN secs, 0.0000 secs, 0.0000 secs
  resp wait:\t NaN secs, 0.0000 secs, 0.0000 secs
  resp read:\t NaN secs, 0.0000 secs, 0.0000 secs

Status code distribution:

Error distribution:
  [51802]\tGet "http://127.0.0.1:1/x": dial tcp 127.0.0.1:1: connect: connection refused

"""


def test_clean_summary():
    r = parse_summary(CLEAN)
    assert r["requests"] == 24530
    assert r["duration_us"] == pytest.approx(2.0008e6)
    assert r["rps"] == pytest.approx(24530 / 2.0008)
    assert r["hey_rps"] == pytest.approx(12260.2250)
    assert (r["p50_us"], r["p90_us"], r["p99_us"]) == pytest.approx((600, 800, 1300))
    assert r["mean_us"] == pytest.approx(700) and r["max_us"] == pytest.approx(6100)
    assert r["errors"] == r["non_2xx"] == r["no_answer"] == 0
    assert r["statuses"] == {"200": 24530}


def test_non_2xx_answers_are_errors_but_still_requests():
    r = parse_summary(MIXED)
    assert r["requests"] == 24530
    assert r["non_2xx"] == 530 and r["errors"] == 530 and r["no_answer"] == 0
    assert r["statuses"] == {"200": 24000, "404": 500, "502": 30}


def test_unanswered_requests_are_errors_and_not_requests():
    r = parse_summary(REFUSED)
    assert r["requests"] == 0 and r["rps"] == 0
    assert r["no_answer"] == r["errors"] == 51802
    assert r["p50_us"] is None and r["p99_us"] is None and r["mean_us"] is None
    assert list(r["error_kinds"]) == ['Get "http://127.0.0.1:1/x": dial tcp 127.0.0.1:1: connect: connection refused']


def test_past_heys_result_cap_the_rate_counts_the_answers():
    # hey keeps 1,000,000 results: the status counts stop there, its rate does not.
    text = (CLEAN.replace("24530 responses", "1000000 responses")
            .replace("Requests/sec:\t12260.2250", "Requests/sec:\t600000.0000"))
    r = parse_summary(text)
    assert r["requests"] == round(600000 * 2.0008)


@pytest.mark.parametrize("text", ["", "Usage: hey [options...] <url>\n\nOptions:\n  -n  Number of requests\n",
                                  CLEAN.replace("  Requests/sec:\t12260.2250\n", "")])
def test_no_summary_is_an_error_not_zero(text):
    with pytest.raises(HeyError, match="no summary"):
        parse_summary(text)


needs_hey = pytest.mark.skipif(which("hey") is None, reason="hey not installed (apt-get install hey)")


@pytest.fixture
def origin():
    o = Origin().start()
    yield o
    o.stop()


@needs_hey
def test_every_request_on_its_own_connection(origin):
    r = run_hey(f"{origin.url}/size/100", 2, 1, None)
    assert r["requests"] > 0 and r["errors"] == 0
    assert 0 < r["p50_us"] <= r["p99_us"]
    served = [h for _, u, h in origin.requests if u == b"/size/100"]
    assert len(served) >= r["requests"]
    # A connection per request (RFC 9112 section 9.6: the client asks for the close).
    assert origin.connections >= len(served)
    assert all((b"Connection", b"close") in h for h in served)
    assert not any(n.lower() == b"accept-encoding" for h in served for n, _ in h)


@needs_hey
def test_non_2xx_answers_are_counted_as_errors(origin):
    r = run_hey(f"{origin.url}/status/503", 2, 1, None)
    assert r["requests"] > 0
    assert r["non_2xx"] == r["errors"] == r["requests"]
    assert set(r["statuses"]) == {"503"}


@needs_hey
def test_refused_connections_are_counted_as_errors():
    r = run_hey(f"http://127.0.0.1:{free_port()}/x", 1, 1, None)
    assert r["requests"] == 0 and r["no_answer"] > 0 and r["errors"] == r["no_answer"]
    assert any("refused" in k for k in r["error_kinds"])


@needs_hey
def test_through_a_proxy_the_target_is_absolute_form(origin):
    # The origin stands in for the proxy: what it receives is what a forward proxy would.
    run_hey("http://127.0.0.1:9/size/100", 1, 1, None, proxy=origin.url)
    targets = {u for _, u, _ in origin.requests}
    assert targets == {b"http://127.0.0.1:9/size/100"}
