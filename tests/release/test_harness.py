"""The test harness itself (tests/conftest.py): a stopped proxy leaves nothing open behind.

A pipe left open until garbage collection raises a ResourceWarning in whichever later test
happens to collect it, and tests that turn warnings into errors then fail at random.
"""


def test_a_stopped_proxy_has_its_output_pipes_closed(start_proxy):
    proxy = start_proxy("serve", "--mode", "forward", "--listen", "127.0.0.1:0")
    proxy.stop()
    assert proxy.proc.returncode is not None
    assert proxy.proc.stdout.closed and proxy.proc.stderr.closed
    assert any("listening on" in line for line in proxy.stderr_lines)
