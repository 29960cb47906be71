"""Find the external programs the load benchmark needs, and install missing ones with apt."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# program -> Debian package that provides it
PACKAGES = {
    "wrk": "wrk",
    "hey": "hey",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "varnishd": "varnish",
    "squid": "squid",
    "tinyproxy": "tinyproxy",
    "curl": "curl",
    "taskset": "util-linux",
}
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def which(program: str) -> str | None:
    """Return the path of program, also looking in sbin directories a non-login PATH may miss."""
    found = shutil.which(program)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        cand = Path(d) / program
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def missing(programs) -> list[str]:
    """Return the programs that are not installed."""
    return [p for p in programs if which(p) is None]


def can_install() -> bool:
    """True when apt-get can be used: Linux, root, apt-get present."""
    return sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(programs: list[str], say=print) -> list[str]:
    """Install the packages providing programs with apt-get; return the programs still missing.

    Debian's maintainer scripts would start the system nginx/squid/varnish/haproxy
    services; a policy-rc.d that answers 101 ("action forbidden") stops that, and is
    removed again afterwards if this function created it.
    """
    pkgs = sorted({PACKAGES[p] for p in programs})
    say(f"bench: installing {' '.join(pkgs)} with apt-get (system services are not started)")
    created = False
    if not POLICY_RC.exists():
        POLICY_RC.write_text("#!/bin/sh\n# written by fastproxy bench during apt-get install\nexit 101\n")
        POLICY_RC.chmod(0o755)
        created = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], env=env, check=False, timeout=1200)
    finally:
        if created:
            POLICY_RC.unlink(missing_ok=True)
    return missing(programs)


def version(program: str) -> str:
    """Return a one-line version string of program, or '' if it cannot tell."""
    flags = {"nginx": ["-v"], "haproxy": ["-v"], "varnishd": ["-V"], "squid": ["-v"],
             "tinyproxy": ["-v"], "wrk": ["-v"], "curl": ["--version"]}
    path = which(program)
    if path and program == "hey":
        return _package_version("hey")  # hey has no version flag
    if not path or program not in flags:
        return ""
    try:
        out = subprocess.run([path, *flags[program]], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else ""


def _package_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f"{package} {out.stdout.strip()} (Debian package)" if out.returncode == 0 and out.stdout.strip() else ""
