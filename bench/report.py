"""Turn the raw runs of `bench load` into medians, a markdown table, JSON and a PNG chart."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.rows import GROUPS

ERROR_SHARE_FLAG = 0.01  # over 1% failed requests, a row's speed means nothing
# doc["hey"] when the new-connection runs were not asked for: the table leaves their columns out.
NO_HEY = "skipped (--no-hey)"
# hey spends more CPU per request than most proxies do: when it and the origin fill the load
# core while the proxy still has room, a row's new-connection rate is hey's limit.
LOAD_CORE_FULL, PROXY_CORE_ROOM = 0.9, 0.8


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _spread_pct(xs):
    # Half the min-max range relative to the median: "17.1k ±2%".
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None
    m = statistics.median(xs)
    return 100.0 * (max(xs) - min(xs)) / 2 / m if m else None


def summarize(doc: dict) -> None:
    """Add doc['summary'] (one entry per row and size) and doc['busy'] from doc['rows']."""
    conns = doc["options"]["connections"]
    summary = []
    others = []
    for name, row in doc["rows"].items():
        runs = [r for r in row["runs"] if "failed" not in r]
        failed = [r for r in row["runs"] if "failed" in r]
        if row["group"] == "tunnel":
            if runs or failed:
                mbs = [r["mb_s"] for r in runs]
                summary.append({"row": name, "group": "tunnel", "size": "big", "samples": len(runs),
                                "mb_s": _median(mbs), "mb_s_min": min(mbs, default=None),
                                "mb_s_max": max(mbs, default=None), "mb_s_spread_pct": _spread_pct(mbs),
                                "proxy_cpu_s": _median([r["proxy_cpu_s"] for r in runs]),
                                "failures": [r["failed"] for r in failed]})
            continue
        # Runs without a tool come from before hey was added: they are all wrk runs.
        kept = [r for r in runs if r.get("tool", "wrk") == "wrk"]
        for size in doc["options"]["sizes"]:
            hi = [r for r in kept if r["size"] == size and r["connections"] == conns]
            lo = [r for r in kept if r["size"] == size and r["connections"] == 1]
            new = [r for r in runs if r.get("tool") == "hey" and r["size"] == size]
            bad = [r["failed"] for r in failed if r["size"] == size]
            if not hi and not bad and not new:
                continue
            others += [r["other_cpu_s"] / (r["duration_us"] / 1e6) for r in hi + lo + new]
            rps = [r["rps"] for r in hi]
            eff = [r["req_per_cpu_s"] for r in hi]
            total = sum(r["requests"] for r in hi + lo)
            errors = sum(r["errors"] for r in hi + lo)
            closes = sum(r["closes"] for r in hi + lo)
            entry = {
                "row": name, "group": row["group"], "size": size, "samples": len(hi),
                "rps": _median(rps), "rps_min": min(rps, default=None), "rps_max": max(rps, default=None),
                "rps_spread_pct": _spread_pct(rps),
                "p50_ms": _ms(_median([r["p50_us"] for r in hi])), "p99_ms": _ms(_median([r["p99_us"] for r in hi])),
                "rps_c1": _median([r["rps"] for r in lo]),
                "p50_c1_ms": _ms(_median([r["p50_us"] for r in lo])),
                "p99_c1_ms": _ms(_median([r["p99_us"] for r in lo])),
                "proxy_cpu_s": _median([r["proxy_cpu_s"] for r in hi]),
                "req_per_cpu_s": _median(eff), "req_per_cpu_s_spread_pct": _spread_pct(eff),
                "errors": errors, "error_share": errors / total if total else None,
                "closes": closes, "close_share": closes / total if total else None,
                "origin_share": (sum(r["origin_requests"] for r in hi + lo) / total) if total else None,
                "failures": bad,
            }
            entry.update(_new_conn(new))
            spread = [r["per_worker"] for r in hi if r.get("per_worker")]
            if spread:
                entry["per_worker"] = spread
                entry["per_worker_max_min"] = _median([imbalance(c) for c in spread])
                entry["per_worker_worst"] = max(imbalance(c) for c in spread)
            summary.append(entry)
    # Ratios against the reference row of each group (nginx, nginx-cache, squid, direct download).
    for e in summary:
        ref_name = GROUPS[e["group"]][1]
        ref = next((x for x in summary if x["row"] == ref_name and x["size"] == e["size"]), None)
        if e["group"] == "tunnel":
            e["ratio"] = e["mb_s"] / ref["mb_s"] if ref and ref.get("mb_s") and e.get("mb_s") else None
            continue
        e["ratio_rps"] = e["rps"] / ref["rps"] if ref and ref["rps"] and e["rps"] else None
        e["ratio_eff"] = (e["req_per_cpu_s"] / ref["req_per_cpu_s"]
                          if ref and ref["req_per_cpu_s"] and e["req_per_cpu_s"] else None)
        # A slow moment of the machine hits both rows of an interleaved pair, so the median of
        # the repeat-by-repeat ratios moves less than the ratio of the two medians.
        paired = paired_ratios(doc, e["row"], ref_name, e["size"]) if ref else []
        e["ratio_eff_paired"] = statistics.median(paired) if paired else None
        for key in ("new_conn_rps", "new_conn_req_per_cpu_s"):
            mine, theirs = e.get(key), ref.get(key) if ref else None
            e["ratio_" + key] = mine / theirs if mine and theirs else None
    doc["summary"] = summary
    doc["busy"] = {"other_cores_median": _median(others), "other_cores_max": max(others, default=None)}


def paired_ratios(doc: dict, ours: str, ref: str, size: str) -> list[float]:
    """Ratios of the two rows' efficiency repeat by repeat (interleaved, so each pair shared a moment)."""
    def by_repeat(name):
        return {r["repeat"]: r["req_per_cpu_s"] for r in doc["rows"][name]["runs"]
                if r.get("size") == size and r.get("connections") in (None, doc["options"]["connections"])
                and r.get("tool", "wrk") == "wrk" and "failed" not in r and r.get("req_per_cpu_s")}
    a, b = by_repeat(ours), by_repeat(ref)
    return [a[k] / b[k] for k in sorted(a.keys() & b.keys())]


def imbalance(counts: list[int]) -> float:
    """max/min of connections per worker (inf when a worker got none)."""
    return max(counts) / min(counts) if min(counts) > 0 else float("inf")


def _new_conn(runs: list[dict]) -> dict:
    """Summarize the hey runs (a new connection per request) of one row and size."""
    rps = [r["rps"] for r in runs]
    eff = [r["req_per_cpu_s"] for r in runs]
    # Requests hey sent: answered ones plus those that got no answer at all.
    answered = sum(r["requests"] for r in runs)
    sent = answered + sum(r["no_answer"] for r in runs)
    errors = sum(r["errors"] for r in runs)
    kinds: dict[str, int] = {}
    for r in runs:
        for msg, n in r.get("error_kinds", {}).items():
            kinds[msg] = kinds.get(msg, 0) + n
    return {
        "new_conn_samples": len(runs),
        "new_conn_rps": _median(rps), "new_conn_rps_min": min(rps, default=None),
        "new_conn_rps_max": max(rps, default=None), "new_conn_rps_spread_pct": _spread_pct(rps),
        "new_conn_p50_ms": _ms(_median([r["p50_us"] for r in runs])),
        "new_conn_p99_ms": _ms(_median([r["p99_us"] for r in runs])),
        "new_conn_proxy_cpu_s": _median([r["proxy_cpu_s"] for r in runs]),
        "new_conn_req_per_cpu_s": _median(eff), "new_conn_req_per_cpu_s_spread_pct": _spread_pct(eff),
        "new_conn_errors": errors, "new_conn_error_share": errors / sent if sent else None,
        "new_conn_non_2xx": sum(r["non_2xx"] for r in runs),
        "new_conn_error_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:3]),
        "new_conn_origin_share": (sum(r["origin_requests"] for r in runs) / answered) if answered else None,
        # Cores busy during the runs: hey and the origin (pinned together), and the proxy.
        "new_conn_load_core_busy": _median([(r["hey_cpu_s"] + r["origin_cpu_s"]) / (r["duration_us"] / 1e6)
                                            for r in runs]),
        "new_conn_proxy_core_busy": _median([r["proxy_cpu_s"] / (r["duration_us"] / 1e6)
                                             for r in runs if r["proxy_cpu_s"] is not None]),
    }


def _hey_bound(e: dict) -> bool:
    """True when a proxy row's new-connection rate was limited by hey's core, not by the proxy."""
    load, proxy = e.get("new_conn_load_core_busy"), e.get("new_conn_proxy_core_busy")
    return load is not None and proxy is not None and load >= LOAD_CORE_FULL and proxy < PROXY_CORE_ROOM


def _ms(us):
    return None if us is None else us / 1000.0


def _num(x, unit=""):
    if x is None:
        return "–"
    if x >= 100000:
        return f"{x / 1000:,.0f}k{unit}"
    if x >= 10000:
        return f"{x / 1000:,.1f}k{unit}"
    return f"{x:,.0f}{unit}"


def _pm(x, spread):
    s = _num(x)
    return s if spread is None or x is None else f"{s} ±{spread:.0f}%"


def _lat(a, b):
    if a is None and b is None:
        return "–"
    return " / ".join("–" if x is None else f"{x:.2f}" for x in (a, b))


def _flagged(e: dict) -> bool:
    """True when too many of a row's requests failed, with wrk or with hey."""
    return any((e.get(k) or 0) > ERROR_SHARE_FLAG for k in ("error_share", "new_conn_error_share"))


def _ratio(x):
    return "–" if x is None else f"{x:.2f}x"


def _paired_note(e: dict) -> str:
    p = e.get("ratio_eff_paired")
    return "" if p is None or e.get("ratio_eff") is None or e["samples"] < 2 else f" ({p:.2f}x paired)"


def markdown(doc: dict) -> str:
    """Render the results as markdown: a header, one table per group, then the notes."""
    o = doc["options"]
    m = doc["machine"]
    # Old result files have no "hey" entry: they were made with wrk alone.
    new_cols = "hey" in doc and doc["hey"] != NO_HEY
    lines = [
        f"## fastproxy load benchmark, {doc['date'][:10]}",
        "",
        f"Machine: {m['cpu'] or 'unknown CPU'}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']}, "
        f"Python {m['python']}. Proxy pinned to core {doc['pinning']['proxy']}, wrk and the origin "
        f"(nginx, 1 worker) to core {doc['pinning']['wrk_and_origin']}.",
        f"Each row: `wrk -t1 -c{o['connections']} -d{o['duration']}s`"
        + (f" and `wrk -t1 -c1 -d{o['duration']}s`" if o["c1"] else "")
        + (f" (connections kept alive), and `hey -z {o['duration']}s -c {o['connections']} -disable-keepalive`"
           " (a new connection per request, \"new conn\"; hey reports latency to 0.1 ms)" if new_cols else "")
        + f", {o['repeats']} interleaved repeat(s), median ± half the min–max range; a ratio is of the two "
        "medians, with the median of the repeat-by-repeat ratios beside it (\"paired\").",
        f"Command: `{doc['command']}`",
    ]
    busy = doc.get("busy", {}).get("other_cores_median")
    if busy is not None and busy > 0.05:
        lines.append(f"**Busy machine:** other processes used {busy:.2f} cores on average during the runs "
                     f"(max {doc['busy']['other_cores_max']:.2f}); treat the numbers as indicative.")
    c = o["connections"]
    for group, (title, ref) in GROUPS.items():
        entries = [e for e in doc.get("summary", []) if e["group"] == group]
        rows = [n for n, r in doc["rows"].items() if r["group"] == group]
        if not rows:
            continue
        lines += ["", f"### {title}", ""]
        if group == "tunnel":
            lines += ["| row | MB/s | proxy CPU s | vs direct |", "|---|---:|---:|---:|"]
            for e in entries:
                lines.append(f"| {e['row']} | {_pm(e['mb_s'], e['mb_s_spread_pct'])} | "
                             f"{'–' if e['proxy_cpu_s'] is None else format(e['proxy_cpu_s'], '.2f')} | "
                             f"{_ratio(e['ratio'])} |")
        else:
            extra = " origin share |" if group == "cache" else ""
            new_head = (f" req/s new conn c{c} | p50 / p99 ms new conn | new-conn req per CPU-s "
                        f"| new-conn req/s vs {ref} | new-conn req/CPU-s vs {ref} |") if new_cols else ""
            lines += [f"| row | size | req/s c{c} | p50 / p99 ms c{c} | req/s c1 | p50 / p99 ms c1 | proxy CPU s "
                      f"| req per CPU-s | req/s vs {ref} | req/CPU-s vs {ref} |{new_head}{extra}",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" * 5 if new_cols else "")
                      + ("---:|" if extra else "")]
            for e in entries:
                flag = " ⚠" if _flagged(e) else ""
                cells = [f"{e['row']}{flag}", e["size"], _pm(e["rps"], e["rps_spread_pct"]),
                         _lat(e["p50_ms"], e["p99_ms"]), _num(e["rps_c1"]), _lat(e["p50_c1_ms"], e["p99_c1_ms"]),
                         "–" if e["proxy_cpu_s"] is None else f"{e['proxy_cpu_s']:.2f}",
                         _pm(e["req_per_cpu_s"], e["req_per_cpu_s_spread_pct"]),
                         _ratio(e["ratio_rps"]), _ratio(e["ratio_eff"]) + _paired_note(e)]
                if new_cols:
                    warn = " ⚠" if (e.get("new_conn_error_share") or 0) > ERROR_SHARE_FLAG else ""
                    bound = " *" if _hey_bound(e) else ""
                    cells += [_pm(e.get("new_conn_rps"), e.get("new_conn_rps_spread_pct")) + bound + warn,
                              _lat(e.get("new_conn_p50_ms"), e.get("new_conn_p99_ms")),
                              _pm(e.get("new_conn_req_per_cpu_s"), e.get("new_conn_req_per_cpu_s_spread_pct")),
                              _ratio(e.get("ratio_new_conn_rps")), _ratio(e.get("ratio_new_conn_req_per_cpu_s"))]
                if extra:
                    cells.append("–" if e["origin_share"] is None else f"{100 * e['origin_share']:.1f}%")
                lines.append("| " + " | ".join(cells) + " |")
        if new_cols and doc["hey"] and group != "tunnel":
            lines.append(f"- new-connection columns empty: {doc['hey']}")
        bound = [e for e in entries if _hey_bound(e)]
        if bound:
            lines.append(f"- \\* hey and the origin kept the load core {100 * LOAD_CORE_FULL:.0f}%+ busy while the "
                         f"proxy used at most {max(e['new_conn_proxy_core_busy'] for e in bound):.0%} of its core: "
                         f"that req/s new conn is the load generator's limit; compare new-conn req per CPU-s")
        for n in rows:
            r = doc["rows"][n]
            if r.get("failed"):
                lines.append(f"- ✗ **{n}** could not run: {r['failed']}")
            if r["skipped"]:
                lines.append(f"- **{n}** skipped: {r['skipped']}")
        for e in entries:
            if e.get("error_share") and e["error_share"] > ERROR_SHARE_FLAG:
                lines.append(f"- ⚠ **{e['row']}** {e['size']}: {e['errors']} failed requests "
                             f"({100 * e['error_share']:.1f}%): its numbers are not comparable")
            if (e.get("new_conn_error_share") or 0) > ERROR_SHARE_FLAG:
                kinds = "; ".join(f"{n}× {msg[:120]}" for msg, n in e["new_conn_error_kinds"].items())
                lines.append(f"- ⚠ **{e['row']}** {e['size']}: {e['new_conn_errors']} new-connection requests failed "
                             f"({100 * e['new_conn_error_share']:.1f}%, {e['new_conn_non_2xx']} of them non-2xx answers"
                             + (f"; {kinds}" if kinds else "") + "): its new-conn numbers are not comparable")
            share = e.get("new_conn_origin_share")
            if share is not None and group != "cache" and e["row"] != "direct" and share < 0.9:
                lines.append(f"- **{e['row']}** {e['size']}: only {100 * share:.0f}% of new-connection requests "
                             f"reached the origin: it answered from a cache")
            if share is not None and group == "cache" and share > 0.05:
                lines.append(f"- **{e['row']}** {e['size']}: {100 * share:.0f}% of new-connection requests reached "
                             f"the origin: they were not all cache hits")
            if (group != "cache" and e["row"] != "direct" and e.get("origin_share") is not None
                    and e["origin_share"] < 0.9):
                lines.append(f"- **{e['row']}** {e['size']}: only {100 * e['origin_share']:.0f}% of requests reached "
                             f"the origin: it answered from a cache, so it is not comparable with this group")
            if e.get("close_share") and e["close_share"] > 0.5:
                lines.append(f"- **{e['row']}** {e['size']}: closed the client connection after "
                             f"{100 * e['close_share']:.0f}% of responses (no keep-alive): wrk reconnected each time")
            if e.get("per_worker"):
                counts = ", ".join("/".join(str(n) for n in c) for c in e["per_worker"])
                lines.append(f"- **{e['row']}** {e['size']}: connections per worker mid-run of wrk -c{o['connections']}: "
                             f"{counts} (max/min median {e['per_worker_max_min']:.2f}x, worst "
                             f"{e['per_worker_worst']:.2f}x)")
            for f in e.get("failures", []):
                lines.append(f"- **{e['row']}** {e['size']}: a run failed: {f}")
    lines += ["", "Rows: " + "; ".join(f"{n}: {r['doc']}" for n, r in doc["rows"].items()) + "."]
    if any(r["group"] == "cache" for r in doc["rows"].values()):
        lines.append("Origin share: requests that reached the origin per request sent (0% = all hits).")
    for note in doc.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def chart_unavailable() -> str | None:
    """Return why no chart can be drawn here (matplotlib missing), or None when it can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}); pip install matplotlib (it is in the bench extra)"
    return None


def chart(doc: dict, path: Path) -> Path | None:
    """Draw req/s, req per proxy CPU-second (kept-alive and new connections) and tunnel MB/s as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    entries = [e for e in doc.get("summary", []) if e["group"] != "tunnel" and e["rps"]]
    tunnels = [e for e in doc.get("summary", []) if e["group"] == "tunnel" and e.get("mb_s")]
    rows = list(dict.fromkeys(e["row"] for e in entries))
    sizes = [s for s in doc["options"]["sizes"] if any(e["size"] == s for e in entries)]
    c = doc["options"]["connections"]
    # (summary key, key in each run, which runs, title)
    specs = [("rps", "rps", ("wrk", c), f"requests/s (wrk -c{c}, kept alive)"),
             ("req_per_cpu_s", "req_per_cpu_s", ("wrk", c), "requests per proxy CPU-second (kept alive)")]
    if any(e.get("new_conn_req_per_cpu_s") for e in entries):
        # Per proxy CPU-second, not per wall second: hey shares its core with the origin and
        # spends more per request than the proxy does, so its wall rate says more about hey.
        specs.append(("new_conn_req_per_cpu_s", "req_per_cpu_s", ("hey", c),
                      "requests per proxy CPU-second\n(new connection per request, hey)"))
    panels = len(specs) + bool(tunnels)
    if panels <= 3 and len(specs) == 2:
        # One line: the two keep-alive panels, the narrow tunnel panel beside them.
        fig, axes = plt.subplots(1, panels, figsize=(max(8, 1.0 * len(rows) + 4) + 2.5 * bool(tunnels), 5),
                                 constrained_layout=True, gridspec_kw={"width_ratios": [3, 3, 1.6][:panels]})
        axes = list(axes)
    else:
        # Two per line, so four panels stay readable on a page.
        lines = (panels + 1) // 2
        fig, grid = plt.subplots(lines, 2, figsize=(max(8, 1.0 * len(rows) + 4), 5 * lines),
                                 constrained_layout=True, squeeze=False)
        axes = [ax for line in grid for ax in line]
        for ax in axes[panels:]:
            ax.set_visible(False)
        axes = axes[:panels]
    width = 0.8 / max(1, len(sizes))
    colors = ["#4c72b0", "#55a868", "#c44e52"]
    for ax, (key, run_key, (tool, conns), title) in zip(axes, specs):
        for i, size in enumerate(sizes):
            xs, ys, errs = [], [], [[], []]
            for j, row in enumerate(rows):
                e = next((x for x in entries if x["row"] == row and x["size"] == size), None)
                if not e or e.get(key) is None:
                    continue
                samples = [r[run_key] for r in doc["rows"][row]["runs"]
                           if r.get("size") == size and r.get("connections") == conns
                           and r.get("tool", "wrk") == tool and r.get(run_key) is not None]
                xs.append(j + (i - (len(sizes) - 1) / 2) * width)
                ys.append(e[key])
                errs[0].append(e[key] - min(samples, default=e[key]))
                errs[1].append(max(samples, default=e[key]) - e[key])
            ax.bar(xs, ys, width, label=size, yerr=errs, capsize=3, color=colors[i % len(colors)])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(rows, rotation=35, ha="right")
        for label in ax.get_xticklabels():
            if label.get_text().startswith("fastproxy"):
                label.set_fontweight("bold")
        # Thin separators between the groups (reverse | cache | forward).
        groups = [doc["rows"][n]["group"] for n in rows]
        for j in range(1, len(rows)):
            if groups[j] != groups[j - 1]:
                ax.axvline(j - 0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(title="response")
    if tunnels:
        ax = axes[-1]
        names = [e["row"].removeprefix("tunnel-") for e in tunnels]
        ax.bar(range(len(tunnels)), [e["mb_s"] for e in tunnels], 0.6, color="#8172b2",
               yerr=[[e["mb_s"] - e["mb_s_min"] for e in tunnels], [e["mb_s_max"] - e["mb_s"] for e in tunnels]],
               capsize=3)
        ax.set_xticks(range(len(tunnels)))
        ax.set_xticklabels(names, rotation=35, ha="right")
        ax.set_title("CONNECT tunnel MB/s")
        ax.grid(axis="y", alpha=0.3)
    busy = doc.get("busy", {}).get("other_cores_median")
    note = f" (busy machine: others used {busy:.1f} cores)" if busy and busy > 0.05 else ""
    fig.suptitle(f"fastproxy vs peers, proxy on one core — {doc['date'][:10]}{note}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(doc: dict, out: Path) -> list[Path]:
    """Write results.json, results.md and chart.png into out; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(doc, indent=1, default=str))
    paths[1].write_text(markdown(doc))
    png = chart(doc, out / "chart.png")
    if png:
        paths.append(png)
    return paths
