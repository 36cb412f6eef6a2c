"""The printed report: one table of runs, the memory line, ratios against targets, the audit."""

from __future__ import annotations

import json


def render(report: dict) -> str:
    meta, scenarios = report["meta"], report["scenarios"]
    lines = [
        "",
        f"walletd benchmark — {meta['mode']} mode, {meta.get('cpus')} CPUs, concurrency {meta['concurrency']}, "
        f"warm-up {meta['warmup_s']:g}s + {meta['duration_s']:g}s measured per run, "
        f"PostgreSQL {meta.get('postgres', '?')}",
        f"walletd: WALLETD_LOG_LEVEL={meta['walletd_env'].get('WALLETD_LOG_LEVEL')}, "
        f"WALLETD_ACTOR_IDLE_SECONDS={meta['walletd_env'].get('WALLETD_ACTOR_IDLE_SECONDS')}",
        "",
    ]
    if "citus" in meta:  # bench.run --citus: pg ms/op is the sum over the coordinator and the workers
        c = meta["citus"]
        lines[-1:-1] = [f"Citus: a coordinator and {c['workers']} workers on this machine, {c['shards_per_table']} "
                        f"shards per table; of uniform transfers between the {c['users']:,} users, "
                        f"{c['uniform_cross_shard_share']:.1%} cross shards, {c['uniform_cross_worker_share']:.1%} "
                        "cross workers"]
    head = (f"{'run':<28}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
            f"{'srv ms/op':>10}{'pg ms/op':>10}{'cli ms/op':>10}{'peak MB':>9}")
    lines += [head, "-" * len(head)]

    def cell(value, fmt):
        if value is not None:
            return format(value, fmt)
        width = "".join(ch for ch in fmt.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width or 1))

    for name, s in scenarios.items():
        lat = s.get("latency_ms", {})
        lines.append(
            f"{name:<28}{cell(s.get('ops_per_s'), '9.0f')}{cell(lat.get('p50'), '9.2f')}{cell(lat.get('p99'), '9.2f')}"
            f"{cell(lat.get('max'), '9.1f')}{cell(s.get('errors'), '8d')}{cell(s.get('server_cpu_ms_per_op'), '10.3f')}"
            f"{cell(s.get('pg_cpu_ms_per_op'), '10.3f')}{cell(s.get('client_cpu_ms_per_op'), '10.3f')}"
            f"{cell(s.get('peak_rss_mb'), '9.1f')}")
    legs = scenarios.get("walletd.transfer_legs")
    if legs and legs.get("legs_per_s") is not None:
        lines.append(f"  walletd.transfer_legs: {legs['ops_per_s']:.0f} requests/s x {legs['legs_per_request']} legs "
                     f"= {legs['legs_per_s']:.0f} transfers/s")
    for name, s in scenarios.items():
        after = s.get("after_run")
        if after and after["seconds"] >= 1:  # what the run left for the sealer, self-audit, autovacuum
            lines.append(f"  {name}: leftovers took {after['seconds']:g}s after the window (PostgreSQL "
                         f"{after['pg_cpu_s']:g} CPU s, walletd {cell(after['server_cpu_s'], 'g')} CPU s)")
    for name, s in scenarios.items():
        if s.get("errors"):
            lines.append(f"  {name}: status {s.get('status')}, transport {s.get('transport_errors')}, "
                         f"unfinished {s.get('unfinished')}; e.g. {json.dumps(s.get('error_samples'))[:300]}")
    mem = report.get("memory")
    if mem:
        touch = mem["touch"]
        lat = touch.get("latency_ms") or {}
        lines += ["", f"memory: {mem['wallets_touched']:,} wallets touched once (a transfer out of each) "
                      f"({cell(touch.get('ops_per_s'), '.0f')}/s, p99 {cell(lat.get('p99'), '.1f')} ms, "
                      f"{touch.get('errors')} errors); walletd RSS baseline {mem['rss_baseline_mb']} MB, "
                      f"peak {mem['rss_peak_mb']} MB, after touch {mem['rss_after_touch_mb']} MB, "
                      f"{mem['waited_seconds']:g}s later (idle timeout {mem['idle_seconds']:g}s) "
                      f"{mem['rss_after_idle_mb']} MB = x{mem['after_idle_vs_baseline']} of baseline"]
    lines += ["", f"{'ratio':<34}{'value':>9}  target"]
    tg = report.get("targets", {})
    for key, value in report.get("ratios", {}).items():
        t = tg.get(key)
        verdict = ""
        if t is not None and t.get("met") is not None:
            verdict = f"{t['target']:<8} {'met' if t['met'] else 'MISSED'}"
        lines.append(f"{key:<34}{cell(value, '9.3f')}  {verdict}")
    for key in ("walletd_errors_other_than_4xx", "walletd_4xx"):
        t = tg.get(key)
        if t:
            lines.append(f"{key:<34}{cell(t['value'], '9d')}  {t['target']:<8} {'met' if t['met'] else 'MISSED'}")
    problems = report.get("walletd_log_problems") or {}
    if problems.get("count"):
        lines += ["", f"walletd logged {problems['count']} warning/error line(s): {problems['by_event']}"]
        lines += ["  " + line[:400] for line in problems["first"][:5]]
    audit = report.get("audit")
    lines.append("")
    if audit == "clean":
        lines.append("audit: clean (walletd audit: every balance equals its postings, every entry balances, "
                     "the journal's hash chain holds)")
    elif isinstance(audit, str):
        lines.append(f"audit: {audit}")
    else:
        lines.append("audit: BROKEN — the figures above do not count: "
                     + (json.dumps(audit)[:2000] if not isinstance(audit, str) else audit))
    if report.get("harness_error"):
        lines.append(f"HARNESS ERROR: {report['harness_error'][:2000]}")
    lines.append(f"elapsed {meta.get('elapsed_s')}s")
    return "\n".join(lines)
