"""Valid messages read the same by our parser and by httptools (llhttp), the oracle."""
import pytest

from http_cases import VALID_REQUESTS, VALID_RESPONSES
from oracle import oracle_request, oracle_response, ours_request, ours_response


@pytest.mark.parametrize("raw", VALID_REQUESTS)
def test_request_matches_oracle(raw):
    assert ours_request(raw) == oracle_request(raw)


@pytest.mark.parametrize("raw,flags", [c for c in VALID_RESPONSES if not c[1]])
def test_response_matches_oracle(raw, flags):
    assert ours_response(raw, **flags) == oracle_response(raw)


def test_corpus_is_not_trivial():
    """The corpus covers every framing and target form, so agreement means something."""
    seen = {ours_request(raw)["method"] for raw in VALID_REQUESTS}
    assert {b"GET", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"DELETE"} <= seen
    assert any(ours_request(raw)["trailers"] for raw in VALID_REQUESTS)
    assert sum(bool(ours_request(raw)["body"]) for raw in VALID_REQUESTS) >= 4
