"""Operating a running proxy: log rotation, control commands, the pidfile, the status page.

Real `fastproxy` processes, real signals, real sockets.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import PKG_PARENT


def _get(port: int, target: str, method: str = "GET", body: bytes | None = None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, target, body=body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()




def _wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _cli(*args: str, timeout: float = 20.0, env: dict | None = None
         ) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, PYTHONPATH=PKG_PARENT)
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


# -- SIGUSR1: reopen the logs --------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr1_reopens_the_access_log_after_a_rename(start_proxy, origin, tmp_path, workers):
    log = tmp_path / "access.log"
    proxy = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                        "--upstream", origin.url, "--access-log", str(log),
                        "--workers", workers)
    assert _get(proxy.port, "/size/1?before")[0] == 200
    assert _wait_for(lambda: log.exists() and "before" in log.read_text())
    rotated = tmp_path / "access.log.1"
    os.rename(log, rotated)
    proxy.signal(signal.SIGUSR1)
    assert _wait_for(lambda: sum("reopened" in line for line in proxy.stderr_lines)
                     >= int(workers)), proxy.stderr_lines
    for _ in range(4):   # with two workers, reach both
        assert _get(proxy.port, "/size/1?after")[0] == 200
    assert _wait_for(lambda: log.exists() and "after" in log.read_text()), proxy.stderr_lines
    assert "after" not in rotated.read_text()
    assert proxy.proc.poll() is None
    assert proxy.stop() == 0


# -- the status page (headless Chromium) ---------------------------------------------


def _dead_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()     # nothing listens there now: connections are refused
    return port


def _chromium_dom(url: str, wait_ms: int = 5000) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed")
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", f"--virtual-time-budget={wait_ms}",
                        "--dump-dom", url], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_status_page_in_chromium_names_servers_and_shows_dead_ones(start_proxy, origin,
                                                                   tmp_path, workers):
    dead, checked_dead = _dead_port(), _dead_port()
    conf = tmp_path / "page.toml"
    conf.write_text(f"""
admin = "127.0.0.1:0"
workers = {workers}
[cache]
size = "16MiB"
[[listeners]]
listen = "127.0.0.1:0"
name = "web"
upstream = "app"
[[listeners]]
listen = "127.0.0.1:0"
name = "checked"
upstream = "chk"
[upstreams.app]
servers = ["{origin.url}", "http://127.0.0.1:{dead}"]
[upstreams.chk]
servers = ["http://127.0.0.1:{checked_dead}"]
[upstreams.chk.health]
path = "/"
interval = "0.1s"
fall = 1
""")
    proxy = start_proxy("serve", "--config", str(conf), listeners=3)
    admin = proxy.admin_port()
    for _ in range(40):    # traffic reveals the dead server: it is ejected
        _get(proxy.port, "/size/3")
    dom = _chromium_dom(f"http://127.0.0.1:{admin}/")
    assert "fastproxy status" in dom
    assert f"127.0.0.1:{origin.port}" in dom
    assert re.search(rf"127\.0\.0\.1:{dead}</td><td class=\"(EJECTED|DOWN)\">(EJECTED|DOWN)<",
                     dom), dom
    assert re.search(rf"127\.0\.0\.1:{checked_dead}</td><td class=\"DOWN\">DOWN<", dom), dom
    assert re.search(rf"127\.0\.0\.1:{origin.port}</td><td class=\"UP\">UP<", dom), dom
    assert ">web<" in dom and ">checked<" in dom
    assert f"{workers} worker" in dom
    # The script ran and fetched the page again (virtual time passes the refresh).
    assert "refreshed " in dom, dom[-800:]
    assert "<link" not in dom and "src=\"http" not in dom   # no external assets


# -- POST /reload ----------------------------------------------------------------------


def _two_groups_config(path, origin, target: str, admin: bool = True) -> None:
    path.write_text(f"""
{'admin = "127.0.0.1:0"' if admin else ''}
[[listeners]]
listen = "127.0.0.1:0"
upstream = "{target}"
[upstreams.a]
servers = ["{origin.url}"]
[upstreams.b]
servers = ["{origin.url}"]
[headers]
via_name = "{target}"
""")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_admin_post_reload_applies_a_good_file_and_refuses_a_bad_one(start_proxy, origin,
                                                                     tmp_path, workers):
    conf = tmp_path / "r.toml"
    _two_groups_config(conf, origin, "a")
    proxy = start_proxy("serve", "--config", str(conf), "--workers", workers, listeners=2)
    admin = proxy.admin_port()
    c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)

    def via() -> str:
        c.request("GET", "/size/1")
        r = c.getresponse()
        r.read()
        return r.getheader("via") or ""

    assert via().endswith(" a")
    conf.write_text(conf.read_text().replace('via_name = "a"', 'via_name = "b"'))
    status, body = _get(admin, "/reload", "POST")
    assert status == 200, body
    assert b'"reloaded": true' in body
    c.close()

    def all_b() -> bool:
        got = set()
        for _ in range(6):
            cc = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            cc.request("GET", "/size/1")
            r = cc.getresponse()
            r.read()
            got.add(r.getheader("via"))
            cc.close()
        return got == {"1.1 b"}
    assert _wait_for(all_b), proxy.stderr_lines
    conf.write_text(conf.read_text() + "\n[limits]\nmax_connections = -3\n")
    status, body = _get(admin, "/reload", "POST")
    assert status == 400 and b"limits.max_connections" in body, body
    assert _get(admin, "/reload")[0] == 405
    assert proxy.proc.poll() is None


def test_the_worker_serves_while_a_reload_is_still_loading_the_file(start_proxy, origin,
                                                                  tmp_path):
    # Loading a configuration can take seconds (upstream names resolved through a slow DNS
    # server, a file on a slow disk). The worker used to load it inside its event loop, so
    # every connection waited. Here the file becomes a FIFO: the reload's open() blocks
    # until the test writes the new text, and requests must be answered meanwhile.
    conf = tmp_path / "r.toml"
    _two_groups_config(conf, origin, "a", admin=False)
    proxy = start_proxy("serve", "--config", str(conf), "--workers", "1")
    assert _get(proxy.port, "/size/1")[0] == 200
    text = conf.read_text().replace('via_name = "a"', 'via_name = "b"')
    conf.unlink()
    os.mkfifo(conf)
    proxy.signal(signal.SIGHUP)
    # The reload is now waiting for a writer on the FIFO (O_NONBLOCK opens for writing fail
    # with ENXIO until a reader is there): once it is, the worker must still answer.
    deadline = time.monotonic() + 10
    while True:
        try:
            fd = os.open(conf, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline, "the reload never opened the file"
            time.sleep(0.02)
    try:
        c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=3)
        c.request("GET", "/size/1")
        r = c.getresponse()
        assert r.status == 200 and r.getheader("via").endswith(" a")
        r.read()
        c.close()
    finally:
        os.write(fd, text.encode())
        os.close(fd)

    def reloaded() -> bool:
        c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        c.request("GET", "/size/1")
        r = c.getresponse()
        r.read()
        c.close()
        return r.getheader("via").endswith(" b")
    assert _wait_for(reloaded), proxy.stderr_lines


# -- the pidfile and `fastproxy reload | stop | status` --------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_pidfile_and_control_commands_against_a_running_proxy(start_proxy, origin, tmp_path,
                                                              workers):
    pidfile = tmp_path / "run" / "fp.pid"
    pidfile.parent.mkdir()
    conf = tmp_path / "c.toml"
    _two_groups_config(conf, origin, "a", admin=False)
    conf.write_text(f'pidfile = "{pidfile}"\nworkers = {workers}\n' + conf.read_text())
    assert _cli("status", "--pidfile", str(pidfile)).returncode == 3
    proxy = start_proxy("serve", "--config", str(conf))
    assert _wait_for(pidfile.exists)
    assert int(pidfile.read_text()) == proxy.proc.pid     # the master with several workers
    r = _cli("status", "--config", str(conf))
    assert r.returncode == 0 and f"running (pid {proxy.proc.pid})" in r.stdout, r
    conf.write_text(conf.read_text().replace('via_name = "a"', 'via_name = "b"'))
    r = _cli("reload", "--pidfile", str(pidfile))
    assert r.returncode == 0, r
    assert _wait_for(lambda: sum("reloaded configuration" in line
                                 for line in proxy.stderr_lines) >= int(workers))
    status, _ = _get(proxy.port, "/size/1")
    assert status == 200
    r = _cli("stop", "--config", str(conf))
    assert r.returncode == 0 and "stopped" in r.stdout, r
    assert proxy.proc.wait(5) == 0
    assert not pidfile.exists()                      # removed on the way out
    r = _cli("status", "--pidfile", str(pidfile))
    assert r.returncode == 3 and "not running" in r.stderr
    assert _cli("stop", "--pidfile", str(pidfile)).returncode == 0   # already stopped
    assert _cli("reload", "--pidfile", str(pidfile)).returncode == 1


def test_two_instances_do_not_fight_over_one_pidfile(origin, tmp_path):
    """The first instance owns the default pidfile (locked while it runs); a second one
    writes none and says so; with an explicit pidfile held, a second one does not start."""
    from fastproxy.testing import Proxy
    run = tmp_path / "run"
    run.mkdir()
    env = dict(os.environ, RUNTIME_DIRECTORY=str(run), PYTHONPATH=PKG_PARENT)
    pidfile = run / "fastproxy.pid"
    args = ["serve", "--mode", "forward", "--listen", "127.0.0.1:0"]
    first = Proxy(args, cwd=str(tmp_path), env=env).wait_ready()
    second = None
    try:
        assert _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()
                         == str(first.pid))
        second = Proxy(args, cwd=str(tmp_path), env=env).wait_ready()
        assert _wait_for(lambda: any(f"held by the running fastproxy pid {first.pid}" in x
                                     for x in second.stderr_lines)), second.stderr_lines
        assert pidfile.read_text().strip() == str(first.pid)
        r = _cli("status", env=env)
        assert r.returncode == 0 and f"running (pid {first.pid})" in r.stdout, r
        assert second.stop() == 0
        assert pidfile.read_text().strip() == str(first.pid)    # the second left it alone
        r = _cli("stop", env=env)
        assert r.returncode == 0 and f"stopped (pid {first.pid})" in r.stdout, r
        assert first.proc.wait(5) == 0 and not pidfile.exists()
        # An explicit pidfile: a crashed instance's file (nobody holds its lock) is taken
        # over; one that a running instance holds makes a second one refuse to start.
        explicit = tmp_path / "explicit.pid"
        explicit.write_text("999999\n")
        conf = tmp_path / "c.toml"
        conf.write_text(f'pidfile = "{explicit}"\n[[listeners]]\nlisten = "127.0.0.1:0"\n'
                        'mode = "forward"\n')
        third = second = Proxy(["serve", "--config", str(conf)], cwd=str(tmp_path),
                               env=env).wait_ready()
        assert _wait_for(lambda: explicit.read_text().strip() == str(third.pid))
        r = _cli("serve", "--config", str(conf), env=env, timeout=20)
        assert r.returncode == 1, r
        assert f"the pidfile {explicit} is held by the running fastproxy pid {third.pid}" \
            in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert third.stop() == 0 and not explicit.exists()
    finally:
        for p in (first, second):
            if p is not None:
                p.stop()


def test_control_commands_refuse_a_stale_pidfile(tmp_path):
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{os.getpid()}\n")     # a live process that is not fastproxy
    r = _cli("status", "--pidfile", str(stale))
    assert r.returncode == 3 and "is not fastproxy" in r.stderr, r
    stale.write_text("garbage\n")
    r = _cli("reload", "--pidfile", str(stale))
    assert r.returncode == 1 and "does not hold a process id" in r.stderr, r
    bad = tmp_path / "bad.toml"
    bad.write_text('pidfile = 3\n[[listeners]]\nlisten = "127.0.0.1:0"\nmode = "forward"\n')
    r = _cli("status", "--config", str(bad))
    assert r.returncode == 2 and "pidfile: expected a file path or false" in r.stderr, r


# -- user / group: privileges dropped after binding ----------------------------------------


def _free_privileged_port() -> int:
    import socket
    for port in range(1000, 900, -1):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        return port
    pytest.skip("no free port below 1024")


def _ids(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as fh:
        lines = dict(line.split(":", 1) for line in fh)
    return int(lines["Uid"].split()[1]), int(lines["Gid"].split()[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the test starts the proxy as root")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_user_and_group_are_taken_after_binding_a_privileged_port(start_proxy, origin,
                                                                  tmp_path, workers):
    import grp
    import pwd
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid).gr_name
    port = _free_privileged_port()
    conf = tmp_path / "u.toml"
    conf.write_text(f"""
user = "nobody"
group = "{nogroup}"
workers = {workers}
pidfile = false
[[listeners]]
listen = "127.0.0.1:{port}"
upstream = "a"
[upstreams.a]
servers = ["{origin.url}"]
""")
    os.chmod(tmp_path, 0o755)
    proxy = start_proxy("serve", "--config", str(conf))
    assert proxy.port == port
    assert _get(port, "/size/1")[0] == 200
    assert _wait_for(lambda: sum("running as user nobody" in line
                                 for line in proxy.stderr_lines) >= int(workers)), \
        proxy.stderr_lines
    if workers == "1":
        assert _ids(proxy.proc.pid) == (nobody.pw_uid, nobody.pw_gid)
    else:
        with open(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children") as fh:
            workers_pids = [int(p) for p in fh.read().split()]
        assert workers_pids and all(_ids(p) == (nobody.pw_uid, nobody.pw_gid)
                                    for p in workers_pids)
    assert proxy.stop() == 0


def test_unknown_user_is_a_config_error(tmp_path):
    conf = tmp_path / "u.toml"
    conf.write_text('user = "no-such-user-here"\n[[listeners]]\nlisten = "127.0.0.1:0"\n'
                    'mode = "forward"\n')
    r = _cli("check", "--config", str(conf))
    assert r.returncode == 2 and "user: no user named 'no-such-user-here'" in r.stderr, r


# -- systemd: Type=notify --------------------------------------------------------------


def _notify_socket(tmp_path):
    import socket
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    return sock, path


def _next_state(sock) -> dict:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sd_notify_ready_reloading_stopping(origin, tmp_path, workers):
    from conftest import ProxyProcess
    sock, path = _notify_socket(tmp_path)
    conf = tmp_path / "n.toml"
    _two_groups_config(conf, origin, "a", admin=False)
    conf.write_text(f"workers = {workers}\npidfile = false\n" + conf.read_text())
    old = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = path
    try:
        proxy = ProxyProcess(["serve", "--config", str(conf)], cwd=str(tmp_path))
    finally:
        if old is None:
            del os.environ["NOTIFY_SOCKET"]
        else:
            os.environ["NOTIFY_SOCKET"] = old
    try:
        state = _next_state(sock)
        assert state.get("READY") == "1" and state.get("MAINPID") == str(proxy.proc.pid), state
        proxy.wait_ready(1)
        assert _get(proxy.port, "/size/1")[0] == 200    # READY means it answers
        proxy.signal(signal.SIGHUP)
        state = _next_state(sock)
        assert state.get("RELOADING") == "1" and int(state["MONOTONIC_USEC"]) > 0, state
        assert _next_state(sock).get("READY") == "1"
        proxy.signal(signal.SIGTERM)
        assert _next_state(sock).get("STOPPING") == "1"
        assert proxy.proc.wait(10) == 0
    finally:
        proxy.stop()
        sock.close()


def test_example_unit_file_is_type_notify_with_reload():
    from conftest import ROOT
    text = (ROOT / "examples" / "fastproxy.service").read_text()
    keys = dict(line.split("=", 1) for line in text.splitlines()
                if "=" in line and not line.startswith("#"))
    assert keys["Type"] == "notify"
    assert "HUP" in keys["ExecReload"] and keys["ExecStart"].split()[1] == "serve"
    exe = shutil.which("systemd-analyze")
    if exe:
        r = subprocess.run([exe, "verify", "--man=no", str(ROOT / "examples" / "fastproxy.service")],
                           capture_output=True, text=True, timeout=60, check=False)
        assert "Unknown key" not in r.stderr and "Invalid" not in r.stderr, r.stderr


# -- check --print, --help ---------------------------------------------------------------


def test_check_print_shows_defaults_and_flags_as_toml(tmp_path):
    import tomllib
    r = _cli("check", "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0",
             "--workers", "3", "--cache", "32MiB", "--print")
    assert r.returncode == 0, r.stderr
    doc = tomllib.loads(r.stdout)
    assert doc["workers"] == 3
    assert doc["listeners"][0]["listen"] == "127.0.0.1:0"
    assert doc["listeners"][0]["mode"] == "reverse"
    assert doc["upstreams"]["default"]["servers"] == ["http://127.0.0.1:9"]
    assert doc["cache"]["size"] == 32 * 1024 * 1024
    assert doc["timeouts"]["drain"] == 30.0               # a default the flags left alone
    assert doc["limits"]["max_connections"] == 10000
    assert "access_log" in doc and "path" not in doc["access_log"]   # off with flags
    assert "# access_log" not in r.stdout and "path: not set" in r.stdout
    # The file a user runs, printed with its defaults, is still a valid file.
    assert r.stdout.startswith("# fastproxy: effective configuration of <command line>")
    printed = tmp_path / "printed.toml"
    printed.write_text(r.stdout)
    again = _cli("check", "--config", str(printed))
    assert again.returncode == 0, again.stderr
    # Bad input is still one line per problem and exit 2.
    bad = _cli("check", "--listen", "nope", "--print")
    assert bad.returncode == 2 and bad.stdout == ""


def test_the_built_in_default_is_whole_or_replaced_and_never_silently(start_proxy):
    import tomllib
    r = _cli("check", "--print")
    doc = tomllib.loads(r.stdout)
    assert doc["listeners"][0]["mode"] == "forward" and doc["cache"]["size"] == 64 << 20
    assert doc["access_log"]["path"] == "-"
    r = _cli("check", "--print", "--listen", "127.0.0.1:0")
    doc = tomllib.loads(r.stdout)
    assert "cache" not in doc and "path" not in doc["access_log"], r.stdout
    # serve says what the flags left out, and how to keep it.
    proxy = start_proxy("serve", "--listen", "127.0.0.1:0", "--cache", "16MiB")
    assert any("the flags replace the built-in default: no access log (add --access-log - "
               "to keep them)" in x for x in proxy.stderr_lines), proxy.stderr_lines
    proxy = start_proxy("serve", "--listen", "127.0.0.1:0", "--cache", "16MiB",
                        "--access-log", "-")
    assert not any("built-in default" in x for x in proxy.stderr_lines), proxy.stderr_lines


def test_help_shows_the_defaults():
    r = _cli("serve", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for needle in ("default: 127.0.0.1:8080", "default: forward", "default: 1",
                   "default: combined", "built-in default"):
        assert needle in text, (needle, r.stdout)
    r = _cli("stop", "--help")
    assert "default: 60" in " ".join(r.stdout.split())


# -- /metrics additions -----------------------------------------------------------------


def _metrics(port: int) -> dict[str, float]:
    _, body = _get(port, "/metrics")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_histograms_failure_counters_and_build_info(start_proxy, origin, tmp_path,
                                                            workers):
    from fastproxy import __version__
    dead = _dead_port()
    conf = tmp_path / "m.toml"
    conf.write_text(f"""
admin = "127.0.0.1:0"
workers = {workers}
pidfile = false
[[listeners]]
listen = "127.0.0.1:0"
name = "web"
upstream = "app"
[upstreams.app]
servers = ["{origin.url}", "http://127.0.0.1:{dead}"]
""")
    proxy = start_proxy("serve", "--config", str(conf), listeners=2)
    admin = proxy.admin_port()
    for i in range(30):
        assert _get(proxy.port, f"/size/{i % 3}?n={i % 3}")[0] == 200
    m = _metrics(admin)
    assert any(k.startswith('fastproxy_build_info{version="' + __version__ + '"') for k in m)
    assert m['fastproxy_request_duration_seconds_count{listener="web"}'] == 30
    assert m['fastproxy_request_duration_seconds_bucket{listener="web",le="+Inf"}'] == 30
    assert m['fastproxy_upstream_response_seconds_count{group="app"}'] == 30
    buckets = [v for k, v in m.items()
               if k.startswith('fastproxy_request_duration_seconds_bucket{listener="web"')]
    assert buckets == sorted(buckets)          # cumulative
    failed = m[f'fastproxy_upstream_failures_total{{group="app",server="127.0.0.1:{dead}"}}']
    assert failed >= 1
    assert m[f'fastproxy_upstream_failures_total{{group="app",server="127.0.0.1:{origin.port}"}}'] == 0
    assert f'fastproxy_upstream_ejections_total{{group="app",server="127.0.0.1:{dead}"}}' in m
    # One family per name, as OpenMetrics parsers read them: a counter's family is its name
    # less _total, so a gauge "x" beside a counter "x_total" is refused (it was, for
    # upstream_ejections).
    _, text = _get(admin, "/metrics")
    types = [line.split()[2:4] for line in text.decode().splitlines() if line.startswith("# TYPE ")]
    families = [n[:-len("_total")] if kind == "counter" and n.endswith("_total") else n
                for n, kind in types]
    assert len(families) == len(set(families)), sorted(families)
    # The top URLs are on the status page, with their counts summed over workers.
    _, page = _get(admin, "/")
    assert b"Most requested URLs" in page and b"/size/1?n=1</td><td class=\"\">10<" in page, page


# -- the error log ---------------------------------------------------------------------------


def test_health_lines_name_the_group_speak_plainly_and_are_not_repeated_on_reload(
        start_proxy, origin, tmp_path):
    dead = _dead_port()
    conf = tmp_path / "h.toml"
    body = f"""
pidfile = false
[[listeners]]
listen = "127.0.0.1:0"
upstream = "shop"
[upstreams.shop]
servers = ["{origin.url}", "http://127.0.0.1:{dead}"]
[upstreams.shop.health]
path = "/size/1"
interval = "0.05s"
fall = 1
"""
    conf.write_text(body)
    proxy = start_proxy("serve", "--config", str(conf))

    def down_lines():
        return [line for line in proxy.stderr_lines if "is down" in line]
    assert _wait_for(lambda: down_lines()), proxy.stderr_lines
    line = down_lines()[0]
    assert re.match(rf"fastproxy\[\d+\]: warning: upstream shop: server 127\.0\.0\.1:{dead} "
                    r"is down \(health check: connect refused\)$", line), line
    for i in range(3):
        conf.write_text(body + f"\n[headers]\nvia_name = \"gen{i}\"\n")
        proxy.signal(signal.SIGHUP)
        assert _wait_for(lambda n=i + 1: sum("reloaded configuration" in x
                                             for x in proxy.stderr_lines) == n)
    time.sleep(0.5)       # several check rounds of the new generation
    assert len(down_lines()) == 1, down_lines()
    assert not any("Error" in x or "Errno" in x for x in proxy.stderr_lines), proxy.stderr_lines


def test_error_log_json_lines(start_proxy, origin, tmp_path):
    import json
    dead = _dead_port()
    conf = tmp_path / "j.toml"
    conf.write_text(f"""
pidfile = false
[error_log]
format = "json"
[[listeners]]
listen = "127.0.0.1:0"
upstream = "shop"
[upstreams.shop]
servers = ["http://127.0.0.1:{dead}"]
[upstreams.shop.health]
path = "/"
interval = "0.05s"
fall = 1
""")
    proxy = start_proxy("serve", "--config", str(conf))
    assert _wait_for(lambda: any('"health.down"' in x for x in proxy.stderr_lines))
    records = [json.loads(x) for x in proxy.stderr_lines]
    down = next(r for r in records if r["event"] == "health.down")
    assert down["level"] == "warning" and down["group"] == "shop"
    assert down["server"] == f"127.0.0.1:{dead}" and down["reason"] == "connect refused"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$", down["time"])
    assert all(r["pid"] == proxy.proc.pid for r in records)
    assert any("listening on" in r["message"] for r in records)
    bad = _cli("check", "--config", str(conf).replace("j.toml", "x.toml"))
    assert bad.returncode == 2
    (tmp_path / "x.toml").write_text(conf.read_text().replace('"json"', '"xml"'))
    bad = _cli("check", "--config", str(tmp_path / "x.toml"))
    assert bad.returncode == 2 and "error_log.format" in bad.stderr, bad.stderr


# -- the access log --------------------------------------------------------------------------


def test_a_client_that_stops_reading_is_logged_as_slow_not_the_origin(run_proxy, origin, tmp_path):
    """A client that never reads a large body: the proxy stops reading the origin (its idle
    timer must not blame it) and cuts the client after timeouts.client_send."""
    import json
    import socket
    log = tmp_path / "slow.log"
    proxy = run_proxy({"listeners": [{"upstream": "app"}],
                       "upstreams": {"app": {"servers": [origin.url]}},
                       "timeouts": {"upstream_idle": "1s", "client_send": "2s"},
                       "access_log": {"path": str(log), "format": "json"}, "pidfile": False})
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", proxy.port))
    try:
        s.sendall(b"GET /size/200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        assert _wait_for(lambda: log.exists() and log.read_text().strip(), timeout=10)
        waited = time.monotonic() - t0
    finally:
        s.close()
    record = json.loads(log.read_text().splitlines()[0])
    assert record["detail"] == "client stalled: did not read the response for 2s", record
    # Above 1.5 s: cut by client_send (2 s), not by upstream_idle (1 s, the paused origin);
    # below 6 s: cut at all (without the client_send check it would hang until the 10 s wait).
    assert waited > 1.5, f"cut after {waited:.2f}s: by upstream_idle (1 s), not client_send"
    assert waited < 6, f"cut after {waited:.2f}s: client_send (2 s) did not cut it"
    assert 0 < record["bytes_sent"] < 200000000
    # The origin was not blamed: the next request through the same group works at once.
    assert _get(proxy.port, "/size/10")[0] == 200



def test_access_log_counts_the_proxys_own_answers_and_writes_iso_time(start_proxy, tmp_path):
    import json
    log = tmp_path / "a.log"
    proxy = start_proxy("serve", "--listen", "127.0.0.1:0", "--mode", "forward",
                        "--access-log", str(log), "--log-format", "json")
    # A forward proxy refuses loopback destinations by default: a 403 it writes itself.
    status, body = _get(proxy.port, "http://127.0.0.1:9/x")
    assert status == 403 and body
    assert _wait_for(lambda: log.exists() and log.read_text().strip())
    record = json.loads(log.read_text().splitlines()[0])
    assert record["status"] == 403
    assert record["bytes_sent"] == len(body)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$", record["time"])


def test_access_log_text_template(start_proxy, origin, tmp_path):
    log = tmp_path / "t.log"
    fmt = '$remote_addr [$time_iso8601] "$request" $status $bytes_sent up=$upstream ua="$user_agent"'
    proxy = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                        "--upstream", origin.url, "--access-log", str(log), "--log-format", fmt)
    assert _get(proxy.port, "/size/5")[0] == 200
    assert _wait_for(lambda: log.exists() and log.read_text().strip())
    line = log.read_text().splitlines()[0]
    assert re.match(r'^127\.0\.0\.1 \[\d{4}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d\] '
                    rf'"GET /size/5 HTTP/1\.1" 200 5 up=127\.0\.0\.1:{origin.port} '
                    r'ua="[^"]*"$', line), line
    r = _cli("check", "--mode", "forward", "--log-format", "$remote_addr $nope")
    assert r.returncode == 2 and "--log-format: unknown variable $nope" in r.stderr, r.stderr


# -- hash-password at a terminal -------------------------------------------------------------


def _on_a_terminal(keys: list[bytes], interrupt: bool = False) -> tuple[int, str]:
    """Run `fastproxy hash-password` on a pseudo-terminal, typing keys at each prompt."""
    import pty
    import select
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["PYTHONPATH"] = PKG_PARENT
        os.execv(sys.executable, [sys.executable, "-m", "fastproxy", "hash-password"])
    out = b""
    pending = list(keys)
    answered = 0
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            # Answer each prompt once it is shown: getpass flushes what was typed ahead.
            if out.count(b"password:") + out.count(b"again:") > answered:
                answered += 1
                if pending:
                    os.write(fd, pending.pop(0))
                elif interrupt:
                    os.kill(pid, signal.SIGINT)
    finally:
        # The terminal reads EOF while the child is still exiting (its files close before it
        # becomes reapable): give it a moment before calling it hung.
        reap_by = time.monotonic() + 10
        done, status = os.waitpid(pid, os.WNOHANG)
        while done == 0 and time.monotonic() < reap_by:
            time.sleep(0.02)
            done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace")


def test_hash_password_asks_twice_and_cancels_cleanly():
    code, out = _on_a_terminal([b"s3cret\r", b"s3cret\r"])
    assert code == 0 and "again:" in out and "$" in out.splitlines()[-1], out
    code, out = _on_a_terminal([b"s3cret\r", b"other\r"])
    assert code == 2 and "the two passwords differ" in out, out
    code, out = _on_a_terminal([b"\x04"])                 # Ctrl-D at the prompt
    assert code == 130 and "cancelled" in out and "Traceback" not in out, out
    code, out = _on_a_terminal([], interrupt=True)       # Ctrl-C at the prompt
    assert code == 130 and "cancelled" in out and "Traceback" not in out, out


def test_a_drain_that_runs_out_says_how_many_it_cut(start_proxy, origin, tmp_path):
    # After timeouts.drain the requests still in flight are cut; the log said only
    # "draining", "stopped", as if every one had finished.
    conf = tmp_path / "d.toml"
    conf.write_text(f"""
pidfile = false
[timeouts]
drain = "0.5s"
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = ["{origin.url}"]
""")
    proxy = start_proxy("serve", "--config", str(conf))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET /slow/5 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        proxy.signal(signal.SIGTERM)
        assert s.recv(100) == b""          # cut at the end of the drain, no response
    assert _wait_for(lambda: any("stopped" in x for x in proxy.stderr_lines))
    assert any(re.fullmatch(r"fastproxy\[\d+\]: warning: drain: 1 connection\(s\) still open "
                            r"after 0\.5s; closed", x) for x in proxy.stderr_lines), \
        proxy.stderr_lines
