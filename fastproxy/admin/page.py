"""The status page at the admin listener's `/`: one self-contained HTML document.

Rendered on the server from the /status document (so it reads without JavaScript);
a few lines of inline script fetch it again every REFRESH seconds and swap the body.
No external assets: the admin port is often reached through a tunnel with no internet.
"""
from __future__ import annotations

from html import escape

REFRESH = 2.0
TOP_SHOWN = 10     # of the workers' sketches (each bounded, see server/stats.py)

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}
.UP{background:#c8f0c8}.DOWN{background:#f4b4b4}.EJECTED{background:#f8d890}
.DRAINING{background:#c8d8f4}.muted{color:#777}
"""

_JS = """
(function(){
  var every=%d;
  function refresh(){
    fetch(location.pathname,{cache:'no-store'}).then(function(r){
      if(!r.ok) throw new Error(r.status);
      return r.text();
    }).then(function(t){
      var doc=new DOMParser().parseFromString(t,'text/html');
      document.getElementById('main').innerHTML=doc.getElementById('main').innerHTML;
      document.getElementById('refreshed').textContent=
        'refreshed '+new Date().toLocaleTimeString();
    }).catch(function(e){
      document.getElementById('refreshed').textContent='refresh failed: '+e;
    });
  }
  setInterval(refresh,every);
})();
""".replace("%d", str(int(REFRESH * 1000)))


def _table(head: list[str], rows: list[list], left: int = 1) -> str:
    out = ["<table><tr>"]
    out += [f'<th class="l">{escape(h)}</th>' if i < left else f"<th>{escape(h)}</th>"
            for i, h in enumerate(head)]
    out.append("</tr>")
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls, text = cell if isinstance(cell, tuple) else ("l" if i < left else "", cell)
            out.append(f'<td class="{cls}">{escape(str(text))}</td>')
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def render_page(doc: dict) -> str:
    """The HTML status page for a (merged) /status document."""
    plural = "s" if doc["workers"] != 1 else ""
    parts = [(f"<p>fastproxy {escape(str(doc.get('version', '?')))} &middot; up "
              f"{_duration(doc['uptime'])} &middot; {doc['workers']} worker{plural} "
              f"&middot; {doc['connections']} open connections</p>")]
    listeners = doc.get("listeners", {})
    parts.append("<h2>Listeners</h2>")
    parts.append(_table(["name", "address", "mode"], [
        [name, v.get("address", ""), v.get("mode", "")] for name, v in listeners.items()],
        left=3))
    req = doc["requests"]
    parts.append("<h2>Requests</h2>")
    classes = [k for k in req if k != "total"]
    parts.append(_table(["total", *classes, "bytes sent", "bytes received"],
                        [[req["total"], *(req[k] for k in classes),
                          doc["bytes"]["sent"], doc["bytes"]["received"]]], left=0))
    for group, servers in doc.get("upstreams", {}).items():
        parts.append(f"<h2>Upstream {escape(group)}</h2>")
        rows = []
        for name, v in servers.items():
            state = v.get("state", "UP")
            rows.append([name, (state, state), ("l", v.get("check", "")),
                         v.get("active", 0), v.get("pending", 0), v.get("open", 0),
                         v.get("idle", 0), v.get("opened", 0), v.get("failures", 0),
                         v.get("ejections", 0), ("l", v.get("breaker", ""))])
        parts.append(_table(["server", "state", "health check", "in flight", "waiting",
                             "connections", "idle", "opened", "failures", "ejections",
                             "breaker"], rows))
    cache = doc.get("cache")
    if cache is not None:
        looked = cache["hits"] + cache["stale"] + cache["misses"]
        ratio = f"{100 * (cache['hits'] + cache['stale']) / looked:.1f}%" if looked else "-"
        parts.append("<h2>Cache</h2>")
        parts.append(_table(["entries", "bytes", "capacity", "hit ratio", "hits", "stale",
                             "misses", "stores", "evictions", "expirations", "purges"],
                            [[cache["entries"], cache["bytes"], cache["capacity"], ratio,
                              cache["hits"], cache["stale"], cache["misses"], cache["stores"],
                              cache["evictions"], cache["expirations"], cache["purges"]]],
                            left=0))
    tls = doc.get("tls")
    if tls is not None:
        hs = tls["handshakes"]
        failed = ", ".join(f"{k} {v}" for k, v in sorted(hs["failed"].items())) or "-"
        parts.append("<h2>TLS handshakes</h2>")
        parts.append(_table(["completed", "timed out", "closed by the client", "failed"],
                            [[hs["ok"], hs["timeout"], hs["closed"], ("l", failed)]], left=0))
    top = sorted(doc.get("top_urls", {}).items(), key=lambda kv: -kv[1]["requests"])[:TOP_SHOWN]
    if top:
        parts.append("<h2>Most requested URLs</h2>")
        parts.append(_table(["URL", "requests", "cache hit ratio"], [
            [u, v["requests"], f"{100 * v['hits'] / v['requests']:.0f}%"]
            for u, v in top]))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>fastproxy status</title>"
            f"<style>{_CSS}</style></head><body><h1>fastproxy status</h1>"
            f"<div id=\"main\">{''.join(parts)}</div>"
            "<p class=\"muted\" id=\"refreshed\">"
            f"refreshes every {REFRESH:g} s</p>"
            f"<script>{_JS}</script></body></html>")
