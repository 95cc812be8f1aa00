"""Turning bench/results/latest.json into markdown tables, target verdicts and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.procs import percentile

START = "<!-- bench:results:start (written by `python -m bench`; edit outside the markers) -->"
END = "<!-- bench:results:end -->"


def f(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) or isinstance(value, int):
        return f"{value:,.{digits}f}{unit}"
    return str(value)


def ms(value: Any) -> str:
    return f(value * 1000 if isinstance(value, (int, float)) else value, 0)


def duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


# ---- targets -------------------------------------------------------------------------


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met?) for issue 6's targets."""
    out: list[tuple[str, str, bool | None]] = []
    d = r.get("deadline")
    if d:
        p99 = d["lag"]["p99"]
        out.append(
            (
                f"deadline precision p99 ≤ 100 ms at {d['active']:,} active",
                f"p99 {ms(p99)} ms (p50 {ms(d['lag']['p50'])}, max {ms(d['lag']['max'])}); "
                f"{d['cancels_seen_by_server']:,}/{d['deadlines']:,} cancelled, {d['early']} early",
                p99 <= 0.1 and d["missing"] == 0 and d["early"] == 0,
            )
        )
    tp = r.get("throughput")
    if tp:
        ratio = tp["tether"]["polls_per_cpu_second"] / tp["sdk"]["polls_per_cpu_second"]
        out.append(
            (
                "throughput ≥ 1.5× the SDK loop's polls per CPU-second",
                f"{ratio:.2f}× ({tp['tether']['polls_per_cpu_second']:,.0f} vs "
                f"{tp['sdk']['polls_per_cpu_second']:,.0f} polls/CPU-s)",
                ratio >= 1.5,
            )
        )
    tr = r.get("tracking")
    if tr:
        ten = next((x for x in tr if x["interval"] == 5.0 and x["active"] >= 3000), None)
        if ten:
            p99 = ten["lag"]["p99"]
            out.append(
                (
                    f"scheduling lag p99 ≤ 1 s at {ten['active']:,} active, 5 s interval",
                    f"p99 {f(p99, 2)} s, max {f(ten['lag']['max'], 2)} s; "
                    f"{ten['polls_per_second']:,.0f} of {ten['offered_polls_per_second']:,.0f} polls/s due",
                    p99 is not None and p99 <= 1.0,
                )
            )
        big = tr[-1]
        rs = big.get("restart")
        peak = max(big["peak_rss_mb"] or 0, (rs or {}).get("peak_rss_mb") or 0)
        out.append((f"RSS ≤ 200 MB at {big['active']:,} tracked", f"peak {peak:,.0f} MB", peak <= 200))
        if rs:
            first = rs["spawn_to_first_poll"]
            out.append(
                (
                    f"restart ≤ 5 s at {big['active']:,} tracked",
                    f"{f(first, 1)} s from spawn to first poll ({f(rs['spawn_to_started'], 1)} s to daemon.started)",
                    first is not None and first <= 5.0,
                )
            )
    e = r.get("economy")
    if e:
        long = [row for row in e["computed"] if row["duration"] >= 300]
        worst = max(row["polls_ratio"] for row in long)
        out.append(
            (
                "polls per response ≤ 1/10 of the 2 s loop's (> 5 min; computed)",
                f"worst {worst:.3f} ({duration(max(long, key=lambda x: x['polls_ratio'])['duration'])})",
                worst <= 0.1,
            )
        )
        mean_rel = max(row["tether_latency_rel"]["mean"] for row in long)
        p99_rel = max(row["tether_latency_rel"]["p99"] for row in long)
        out.append(
            (
                "detection latency ≤ 10 % of elapsed (> 5 min; computed), mean",
                f"worst mean {mean_rel:.1%}",
                mean_rel <= 0.1,
            )
        )
        out.append(("… the same at p99 (stricter reading)", f"worst p99 {p99_rel:.1%}", p99_rel <= 0.1))
    return out


# ---- tables --------------------------------------------------------------------------


def tables(r: dict[str, Any]) -> str:
    parts = []
    meta = r.get("meta", {})
    if meta:
        m = meta["machine"]
        parts.append(
            f"Taken at `{meta['commit']}`{' (with uncommitted changes in daemon/)' if meta['dirty'] else ''}"
            f"{' — ' + meta['commit_subject'] if meta.get('commit_subject') else ''}\n\n"
            f"{meta['started']} → {meta.get('finished', '?')}; {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
            f"Python {m['python']}, Linux {m['kernel']}; load average before {meta['load_before'][0]:.2f}, "
            f"after {meta.get('load_after', ['?'])[0]:.2f} (1 min)"
            + (" — **quick run (reduced sizes), not for comparison**" if meta.get("quick") else "")
        )
    rows = targets(r)
    if rows:
        parts.append(
            "### Targets\n\n| target | measured | met |\n|---|---|---|\n"
            + "\n".join(
                f"| {t} | {m} | {'✅ yes' if ok else '❌ no' if ok is not None else '–'} |" for t, m, ok in rows
            )
        )
    tr = r.get("tracking")
    if tr:
        lines = [
            "### Tracking load\n",
            "| active | interval | polls/s due | polls/s sustained | poll lag p50 / p99 / max (s) | server-side gap excess p50 / p99 (s) | CPU s per 1,000 polls | peak RSS (MB) | store (MB) | status changes persisted | other load (cores) |",
            "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
        ]
        for x in tr:
            lag, gap = x["lag"], x["server_gap_excess"]
            lines.append(
                f"| {x['active']:,} | {x['interval']:g} s | {x['offered_polls_per_second']:,.0f} | {x['polls_per_second']:,.0f} | "
                f"{f(lag['p50'], 2)} / {f(lag['p99'], 2)} / {f(lag['max'], 2)} | {f(gap['p50'], 2)} / {f(gap['p99'], 2)} | "
                f"{f(x['cpu_per_1000_polls'], 2)} | {f(x['peak_rss_mb'], 0)} | {f(x['store_mb'], 1)} | {x['status_changes_persisted']:,} | {f(x.get('others_cores'), 2)} |"
            )
        parts.append("\n".join(lines))
        rs = tr[-1].get("restart")
        if rs:
            parts.append(
                "### Restart\n\n| tracked | spawn → `daemon.started` | spawn → first poll | peak RSS after start (MB) |\n|---:|---:|---:|---:|\n"
                f"| {tr[-1]['active']:,} | {f(rs['spawn_to_started'], 2)} s | {f(rs['spawn_to_first_poll'], 2)} s | {f(rs['peak_rss_mb'], 0)} |"
            )
    tp = r.get("throughput")
    if tp:
        t, s, c = tp["tether"], tp["sdk"], tp["ceiling"]
        parts.append(
            f"### Throughput against the baselines ({tp['active']:,} responses, same run)\n\n"
            "| client | polls/s | CPU s | polls per CPU-second | tether's ratio (polls/s · per CPU-s) | other load (cores) |\n|---|---:|---:|---:|---|---:|\n"
            f"| tether (`tether run`, 1 s interval, persisting; {t['status_changes_persisted']:,} status changes) | {t['polls_per_second']:,.0f} | {t['cpu_seconds']:.1f} | {t['polls_per_cpu_second']:,.0f} | – | {f(t.get('others_cores'), 2)} |\n"
            f"| SDK loop (`AsyncOpenAI.responses.retrieve`, 16 concurrent, no persistence) | {s['polls_per_second']:,.0f} | {s['cpu_seconds']:.1f} | {s['polls_per_cpu_second']:,.0f} | "
            f"{t['polls_per_second'] / s['polls_per_second']:.2f}× · {t['polls_per_cpu_second'] / s['polls_per_cpu_second']:.2f}× | {f(s.get('others_cores'), 2)} |\n"
            f"| stand-in's ceiling (plain load generator, 32 connections) | {c['requests_per_second']:,.0f} | – | – | "
            f"{t['polls_per_second'] / c['requests_per_second']:.2f}× of the ceiling | {f(c.get('others_cores'), 2)} |"
        )
    d = r.get("deadline")
    if d:
        lag = d["lag"]
        parts.append(
            f"### Deadline precision\n\n{d['active']:,} active responses, `max_runtime` deadlines spread over {d['spread_seconds']:g} s "
            "(on whole seconds, as `created_at` is), all polled meanwhile.\n\n"
            "| cancels at the server | early | cancel − deadline p50 / p99 / max (ms) | daemon's own: worst p99 / max (ms) | requests/s at the stand-in | daemon CPU (cores) | other load (cores) |\n|---:|---:|---|---|---:|---:|---:|\n"
            f"| {d['cancels_seen_by_server']:,} / {d['deadlines']:,} | {d['early']} | {ms(lag['p50'])} / {ms(lag['p99'])} / {ms(lag['max'])} | "
            f"{ms(d['daemon_lag_worst_p99'])} / {ms(d['daemon_lag_max'])} | {f(d['gets_per_second'], 0)} | {f(d['cpu_share'], 2)} | {f(d.get('others_cores'), 2)} |"
        )
        bursts = d.get("bursts")
        if bursts:
            firsts, lasts = sorted(b["first"] for b in bursts), sorted(b["last"] for b in bursts)
            parts[-1] += (
                f"\n\nPer deadline second ({len(bursts)} bursts of {min(b['n'] for b in bursts)}–{max(b['n'] for b in bursts)} "
                f"cancels): a burst's first cancel reached the server {ms(percentile(firsts, 0.5))} ms after its deadline "
                f"(median over the bursts), its last {ms(percentile(lasts, 0.5))} ms (median; {ms(lasts[0])} to {ms(lasts[-1])} ms)."
            )
    e = r.get("economy")
    if e:
        lines = [
            "### API economy (computed from `tether.schedule` with the default `[polling]`)\n",
            "| response duration | tether polls | 2 s loop polls | ratio | tether detection latency mean / p99 (s) | as % of duration: mean / p99 | 2 s loop latency mean (s) |",
            "|---:|---:|---:|---:|---|---|---:|",
        ]
        for row in e["computed"]:
            lat, rel = row["tether_latency"], row["tether_latency_rel"]
            lines.append(
                f"| {duration(row['duration'])} | {row['tether_polls']:.1f} | {row['loop_polls']:.1f} | {row['polls_ratio']:.3f} | "
                f"{lat['mean']:.1f} / {lat['p99']:.1f} | {rel['mean']:.1%} / {rel['p99']:.1%} | {row['loop_latency']['mean']:.1f} |"
            )
        parts.append("\n".join(lines))
        lines = [
            "### API economy, measured (validation of the computed figures)\n",
            "| duration | responses | tether polls measured / computed | tether detection latency (s) measured mean (max) / computed | 2 s SDK loop polls measured / computed | 2 s loop latency measured (s) |",
            "|---:|---:|---|---|---|---:|",
        ]
        for row in e["validation"]:
            lines.append(
                f"| {duration(row['duration'])} | {row['n']} | {row['tether_polls_measured']:.2f} / {row['tether_polls_computed']:.2f} | "
                f"{row['tether_latency_measured']:.2f} ({row['tether_latency_measured_max']:.2f}) / {row['tether_latency_computed']:.2f} | "
                f"{row['loop_polls_measured']:.2f} / {row['loop_polls_computed']} | {row['loop_latency_measured']:.2f} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# ---- plots ---------------------------------------------------------------------------


def plots(r: dict[str, Any], docs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    tr = r.get("tracking")
    if tr:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        labels = [f"{x['active']:,}\n({x['interval']:g} s)" for x in tr]
        xs = range(len(tr))
        a.bar([i - 0.2 for i in xs], [x["offered_polls_per_second"] for x in tr], 0.4, label="due", color="#bbb")
        a.bar([i + 0.2 for i in xs], [x["polls_per_second"] for x in tr], 0.4, label="sustained", color="#1f77b4")
        a.set_xticks(list(xs), labels)
        a.set_yscale("log")
        a.set_ylabel("polls per second")
        a.set_xlabel("active responses (poll interval)")
        a.set_title("Polls per second")
        a.legend()
        for key, style in (("p50", "o-"), ("p99", "s-"), ("max", "^--")):
            b.plot(list(xs), [max(x["lag"][key] or 0, 1e-3) for x in tr], style, label=f"poll lag {key}")
        b.axhline(1.0, color="red", lw=0.8, ls=":", label="target p99 (10,000 active)")
        b.set_xticks(list(xs), labels)
        b.set_yscale("log")
        b.set_ylabel("actual poll − due (s)")
        b.set_title("Scheduling lag")
        b.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "bench-tracking.png", dpi=110)
        plt.close(fig)
        made.append("bench-tracking.png")
    d = r.get("deadline")
    if d and d.get("lags"):
        lags_ms = [x * 1000 for x in d["lags"]]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        a.hist(lags_ms, bins=60, color="#1f77b4")
        a.set_xlabel("cancel at the server − deadline (ms)")
        a.set_ylabel("responses")
        a.set_title(f"Deadline precision, {d['active']:,} deadlines over {d['spread_seconds']:g} s")
        n = len(lags_ms)
        b.plot(lags_ms, [(i + 1) / n for i in range(n)])
        b.axvline(100, color="red", lw=0.8, ls=":", label="target p99 100 ms")
        b.axhline(0.99, color="grey", lw=0.6, ls=":")
        b.set_xscale("log")
        b.set_xlim(left=min(max(min(lags_ms), 0.1) / 2, 20))  # the 100 ms target stays in view
        b.set_xlabel("cancel − deadline (ms)")
        b.set_ylabel("fraction of cancels")
        b.set_title("CDF")
        b.legend()
        fig.tight_layout()
        fig.savefig(docs / "bench-deadline.png", dpi=110)
        plt.close(fig)
        made.append("bench-deadline.png")
    e = r.get("economy")
    if e:
        from bench.economy import curve
        from tether.config import PollingConfig

        c = curve(PollingConfig())
        ds = [p["duration"] for p in c]
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
        a.plot(ds, [p["tether_polls"] for p in c], label="tether (computed)")
        a.plot(ds, [p["loop_polls"] for p in c], label="fixed 2 s loop (computed)")
        a.plot(ds, [p["loop_polls"] / 10 for p in c], ":", color="grey", label="1/10 of the 2 s loop")
        v = e["validation"]
        a.plot(
            [x["duration"] for x in v],
            [x["tether_polls_measured"] for x in v],
            "o",
            color="C0",
            label="tether (measured)",
        )
        a.plot(
            [x["duration"] for x in v],
            [x["loop_polls_measured"] for x in v],
            "s",
            color="C1",
            label="2 s SDK loop (measured)",
        )
        a.axvline(300, color="red", lw=0.6, ls=":")
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("response duration (s)")
        a.set_ylabel("polls per response")
        a.set_title("Polls per response over its life")
        a.legend(fontsize=8)
        b.plot(ds, [100 * p["latency_mean"] / p["duration"] for p in c], label="tether mean (computed)")
        b.plot(ds, [100 * p["latency_p99"] / p["duration"] for p in c], label="tether p99 (computed)")
        b.axhline(10, ls=":", color="red", label="target: 10 % (over 5 min)")
        b.plot(
            [x["duration"] for x in v],
            [100 * x["tether_latency_measured"] / x["duration"] for x in v],
            "o",
            color="C0",
            label="tether mean (measured)",
        )
        b.plot(
            [x["duration"] for x in v],
            [100 * x["loop_latency_measured"] / x["duration"] for x in v],
            "s",
            color="C1",
            label="2 s SDK loop mean (measured)",
        )
        b.axvline(300, color="red", lw=0.6, ls=":")
        b.set_xscale("log")
        b.set_ylim(0, 100)
        b.set_xlabel("response duration (s)")
        b.set_ylabel("detection latency, % of the duration")
        b.set_title("Terminal on the server → terminal in the store")
        b.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "bench-economy.png", dpi=110)
        plt.close(fig)
        made.append("bench-economy.png")
    tp = r.get("throughput")
    if tp:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
        names = ["tether", "SDK loop", "stand-in ceiling"]
        a.bar(
            names,
            [tp["tether"]["polls_per_second"], tp["sdk"]["polls_per_second"], tp["ceiling"]["requests_per_second"]],
            color=["#1f77b4", "#ff7f0e", "#999"],
        )
        a.set_ylabel("polls (GETs) per second")
        a.set_title("Saturated throughput")
        b.bar(
            names[:2],
            [tp["tether"]["polls_per_cpu_second"], tp["sdk"]["polls_per_cpu_second"]],
            color=["#1f77b4", "#ff7f0e"],
        )
        b.axhline(
            1.5 * tp["sdk"]["polls_per_cpu_second"], color="red", lw=0.8, ls=":", label="target: 1.5× the SDK loop"
        )
        b.set_ylabel("polls per CPU-second")
        b.set_title("CPU efficiency")
        b.legend()
        fig.tight_layout()
        fig.savefig(docs / "bench-throughput.png", dpi=110)
        plt.close(fig)
        made.append("bench-throughput.png")
    return made


def write_docs(r: dict[str, Any], docs: Path) -> None:
    docs.mkdir(exist_ok=True)
    images = plots(r, docs)
    body = tables(r) + "\n" + "\n\n".join(f"![{name}]({name})" for name in images) + "\n"
    path = docs / "benchmarks.md"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n\n{body}\n{END}{tail}")


# ---- before / after ------------------------------------------------------------------


def headline(r: dict[str, Any]) -> dict[str, tuple[str, float | None]]:
    """The figures the targets are about, by name: (display, value)."""
    out: dict[str, tuple[str, float | None]] = {}
    tr = r.get("tracking") or []
    for x in tr:
        out[f"polls/s sustained, {x['active']:,} active ({x['offered_polls_per_second']:,.0f} due)"] = (
            f"{x['polls_per_second']:,.0f}",
            x["polls_per_second"],
        )
        out[f"poll lag p99, {x['active']:,} active (s)"] = (f(x["lag"]["p99"], 2), x["lag"]["p99"])
        out[f"CPU s per 1,000 polls, {x['active']:,} active"] = (f(x["cpu_per_1000_polls"], 2), x["cpu_per_1000_polls"])
    if tr:
        big = tr[-1]
        rs = big.get("restart") or {}
        peak = max(big["peak_rss_mb"] or 0, rs.get("peak_rss_mb") or 0)
        out[f"peak RSS, {big['active']:,} tracked (MB)"] = (f"{peak:,.0f}", peak)
        out[f"restart: spawn → first poll, {big['active']:,} tracked (s)"] = (
            f(rs.get("spawn_to_first_poll"), 1),
            rs.get("spawn_to_first_poll"),
        )
    tp = r.get("throughput")
    if tp:
        out["polls per CPU-second, saturated"] = (
            f"{tp['tether']['polls_per_cpu_second']:,.0f}",
            tp["tether"]["polls_per_cpu_second"],
        )
        ratio = tp["tether"]["polls_per_cpu_second"] / tp["sdk"]["polls_per_cpu_second"]
        out["… ratio to the SDK loop (same run)"] = (f"{ratio:.2f}×", ratio)
    d = r.get("deadline")
    if d:
        out[f"cancels at the server / {d['deadlines']:,}"] = (
            f"{d['cancels_seen_by_server']:,}",
            d["cancels_seen_by_server"],
        )
        for k in ("p50", "p99", "max"):
            out[f"cancel − deadline {k} (ms)"] = (ms(d["lag"][k]), d["lag"][k])
    return out


def comparison(before: dict[str, Any], after: dict[str, Any], names: tuple[str, str] = ("before", "after")) -> str:
    a, b = headline(before), headline(after)
    lines = [f"| figure | {names[0]} | {names[1]} |", "|---|---:|---:|"]
    for key in a:
        if key in b:
            lines.append(f"| {key} | {a[key][0]} | {b[key][0]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Print the tables of a results file, or compare two (before / after).",
    )
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--names", nargs=2, default=("before", "after"))
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="also rewrite docs/benchmarks.md's results section and docs/bench-*.png from the (first) file",
    )
    args = parser.parse_args()
    runs = [json.loads(p.read_text()) for p in args.results]
    print(tables(runs[0]) if len(runs) == 1 else comparison(runs[0], runs[1], tuple(args.names)))
    if args.write_docs:
        write_docs(runs[0], Path(__file__).resolve().parent.parent / "docs")
