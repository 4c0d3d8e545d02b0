#!/usr/bin/env python3
"""Summarise one load.sh run directory.

Reads, for every SIPp instance ("role") under RUN_DIR/<role>/:
  stat.csv            SIPp -trace_stat output (last row = final cumulative counters)
  *_logs.log          SIPp -trace_logs output with our timing lines:
                        "RT <name> S0,U0,S1,U1"  request sent -> answer (gettimeofday
                                                 seconds,microseconds)
                        "EV <name> S,U [...]"    a timestamped event
and RUN_DIR/meta.json written by load.sh.  Prints a text summary and writes
RUN_DIR/summary.json and RUN_DIR/summary.txt.
"""
import csv
import glob
import json
import math
import os
import sys


def percentile(sorted_vals, p):
    """Nearest-rank percentile (p in 0..100) of an ascending list."""
    if not sorted_vals:
        return None
    k = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[min(k, len(sorted_vals)) - 1]


def read_stat(path):
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    if len(rows) < 2:
        return {}
    head, last = rows[0], rows[-1]
    out = {}
    for k, v in zip(head, last):
        if not k:
            continue
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def read_logs(role_dir):
    """Timing lines: "RT name S0,U0,S1,U1" and "EV name S,U [...]".
    SIPp prints a variable holding 0 as an empty string, hence num()."""
    def num(x):
        return float(x) if x.strip() else 0.0

    rts, evs = {}, {}
    for path in glob.glob(os.path.join(role_dir, "*_logs.log")):
        with open(path, errors="replace") as f:
            for line in f:
                p = line.split()
                if len(p) < 3 or p[0] not in ("RT", "EV"):
                    continue
                v = p[2].split(",")
                try:
                    if p[0] == "RT" and len(v) == 4:
                        t0 = num(v[0]) + num(v[1]) / 1e6
                        t1 = num(v[2]) + num(v[3]) / 1e6
                        rts.setdefault(p[1], []).append((t0, t1))
                    elif p[0] == "EV" and len(v) == 2:
                        evs.setdefault(p[1], []).append(num(v[0]) + num(v[1]) / 1e6)
                except ValueError:
                    continue
    return rts, evs


def lat_stats(pairs):
    lat = sorted((t1 - t0) * 1000.0 for t0, t1 in pairs if t1 >= t0)
    if not lat:
        return None
    return {
        "n": len(lat),
        "min_ms": round(lat[0], 3),
        "mean_ms": round(sum(lat) / len(lat), 3),
        "p50_ms": round(percentile(lat, 50), 3),
        "p90_ms": round(percentile(lat, 90), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "p99.9_ms": round(percentile(lat, 99.9), 3),
        "max_ms": round(lat[-1], 3),
    }


STAT_KEYS = [
    ("OutgoingCall(C)", "calls_created"),
    ("SuccessfulCall(C)", "calls_ok"),
    ("FailedCall(C)", "calls_failed"),
    ("Retransmissions(C)", "retransmissions"),
    ("FailedMaxUDPRetrans(C)", "failed_max_udp_retrans"),
    ("FailedTimeoutOnRecv(C)", "failed_recv_timeout"),
    ("FailedUnexpectedMessage(C)", "failed_unexpected_msg"),
    ("FailedRegexpDoesntMatch(C)", "failed_body_check"),
    ("FailedTcpConnect(C)", "failed_tcp_connect"),
    ("FailedTcpClosed(C)", "failed_tcp_closed"),
    ("FailedCannotSendMessage(C)", "failed_cannot_send"),
    ("DeadCallMsgs(C)", "dead_call_msgs"),
    ("OutOfCallMsgs(C)", "out_of_call_msgs"),
    ("CallRate(C)", "sipp_call_rate"),
]


def summarise_role(role_dir):
    st = read_stat(os.path.join(role_dir, "stat.csv"))
    res = {}
    for k, name in STAT_KEYS:
        if k in st:
            res[name] = st[k]
    rts, evs = read_logs(role_dir)
    res["latency"] = {name: lat_stats(v) for name, v in sorted(rts.items())}
    created = res.get("calls_created", 0)
    ok = res.get("calls_ok", 0)
    res["success_pct"] = round(100.0 * ok / created, 3) if created else 0.0
    # send window: first to last request (from our timing lines)
    firsts = [p for v in rts.values() for p in v]
    if firsts:
        t_first = min(t0 for t0, _ in firsts)
        t_last_send = max(t0 for t0, _ in firsts)
        t_last_done = max(t1 for _, t1 in firsts)
        res["send_window_s"] = round(t_last_send - t_first, 3)
        res["total_window_s"] = round(t_last_done - t_first, 3)
        if t_last_done > t_first:
            res["throughput_ok_per_s"] = round(ok / (t_last_done - t_first), 1)
        if t_last_send > t_first and created > 1:
            res["achieved_send_rate_per_s"] = round((created - 1) / (t_last_send - t_first), 1)
        res["_t_first"] = t_first
    res["_rts"] = rts
    res["_evs"] = evs
    return res


def fmt_lat(name, s):
    if not s:
        return f"    {name:<16} (no samples)"
    return (f"    {name:<16} n={s['n']:<7} min={s['min_ms']:.3f} p50={s['p50_ms']:.3f} "
            f"p90={s['p90_ms']:.3f} p99={s['p99_ms']:.3f} p99.9={s['p99.9_ms']:.3f} "
            f"max={s['max_ms']:.3f} ms")


def main(run_dir):
    meta = {}
    mp = os.path.join(run_dir, "meta.json")
    if os.path.exists(mp):
        with open(mp) as f:
            meta = json.load(f)
    roles = {}
    for d in sorted(glob.glob(os.path.join(run_dir, "*", ""))):
        role = os.path.basename(os.path.dirname(d))
        roles[role] = summarise_role(d)

    out = {"meta": meta, "roles": {}}
    lines = []
    w = meta.get("workload", "?")
    lines.append(f"workload={w} target={meta.get('target')}:{meta.get('port')}/{meta.get('transport')} "
                 f"rate={meta.get('rate')}/s count={meta.get('count')} run_id={meta.get('run_id')}")
    # fan-out: NOTIFYs caused by the single PUBLISH
    if w == "fanout" and "watchers" in roles and "publisher" in roles:
        pub = roles["publisher"]["_rts"].get("publish", [])
        notes = sorted(roles["watchers"]["_evs"].get("fanout_notify", []))
        fan = {"watchers": meta.get("count"), "notifies_received": len(notes),
               "publish_ok": roles["publisher"].get("calls_ok", 0)}
        if pub and notes:
            t_pub = pub[0][0]
            d = [(t - t_pub) * 1000.0 for t in notes]
            fan.update({
                "publish_response_ms": round((pub[0][1] - pub[0][0]) * 1000.0, 3),
                "first_notify_ms": round(d[0], 3),
                "p50_notify_ms": round(percentile(d, 50), 3),
                "p99_notify_ms": round(percentile(d, 99), 3),
                "last_notify_ms": round(d[-1], 3),
                "notifies_per_s": round(len(d) / (d[-1] / 1000.0), 1) if d[-1] > 0 else None,
            })
        out["fanout"] = fan
    for role, r in roles.items():
        clean = {k: v for k, v in r.items() if not k.startswith("_")}
        out["roles"][role] = clean
        lines.append(f"  [{role}] sent={r.get('calls_created', 0)} ok={r.get('calls_ok', 0)} "
                     f"failed={r.get('calls_failed', 0)} success={r.get('success_pct', 0)}% "
                     f"retrans={r.get('retransmissions', 0)} "
                     f"achieved_send_rate={r.get('achieved_send_rate_per_s', '-')}/s "
                     f"throughput={r.get('throughput_ok_per_s', '-')}/s")
        fails = {k: r[k] for k in ("failed_max_udp_retrans", "failed_recv_timeout",
                                   "failed_unexpected_msg", "failed_body_check",
                                   "failed_tcp_connect", "failed_tcp_closed",
                                   "failed_cannot_send") if r.get(k)}
        if fails:
            lines.append(f"    failures: {fails}")
        for name, s in r["latency"].items():
            lines.append(fmt_lat(name, s))
        if r.get("_evs"):
            for name, v in r["_evs"].items():
                lines.append(f"    event {name}: {len(v)}")
    if "fanout" in out:
        f = out["fanout"]
        lines.append(f"  [fanout] watchers={f['watchers']} notifies={f['notifies_received']} "
                     + " ".join(f"{k}={v}" for k, v in f.items()
                                if k not in ("watchers", "notifies_received")))
    if meta.get("server_cpu_s") is not None:
        lines.append(f"  server CPU during run: {meta['server_cpu_s']} s "
                     f"(pids {meta.get('server_pids')})")
    if meta.get("client_cpu_s") is not None:
        lines.append(f"  SIPp CPU during run: {meta['client_cpu_s']} s over {meta.get('wall_s')} s wall")
    if meta.get("other_cpu_s") is not None:
        lines.append(f"  CPU used by other processes during run: {meta['other_cpu_s']} s"
                     + ("  (machine not quiet: figures less comparable)"
                        if meta["other_cpu_s"] > 0.1 * (meta.get("wall_s") or 0) else ""))
    if meta.get("udp_rcvbuf_errors"):
        lines.append(f"  kernel UDP receive-buffer drops during run: {meta['udp_rcvbuf_errors']}")
    text = "\n".join(lines)
    with open(os.path.join(run_dir, "summary.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    try:
        print(text, flush=True)
    except BrokenPipeError:
        pass


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py RUN_DIR")
    main(sys.argv[1])
