#!/usr/bin/env python3
"""Memory per idle subscription of a presence server (stdlib only).

    memory.py [-n N] [--port PORT] [--window W] [--warmup K] [--attach PID]
              [--keep] [-- extra presence-node args]

Starts our node with bench/node.sh (SIP on 127.0.0.1:PORT, default 5080), or
with --attach PID measures an already running server that listens on PORT
(e.g. Kamailio: --attach $(cat bench/run/kamailio/kamailio.pid) --port 5070).
Then, with a UDP client of its own, it creates N subscriptions (default
100000): one SUBSCRIBE (Event: presence, Expires: 3600) per distinct
watcher/presentity pair, each done when both the 2xx and the initial NOTIFY
have arrived; every NOTIFY is answered 200 so that nothing is retransmitted.
At most W (default 500) subscriptions are outstanding at any time, so the
server is never flooded; a SUBSCRIBE with no final response is retransmitted
(0.5, 1, 2, 4 s) and given up after 6 tries.

K warm-up subscriptions (default 1000) come first and are not counted:
lazily loaded code and first-use caches are then already in the "before"
figure.  The server's memory is read from /proc/PID/status (VmRSS; for a
server with child processes also the sum of Pss over the process and its
children, from /proc/PID/smaps_rollup) before and after (after the last
subscription, SETTLE_S seconds later, default 2), and the script prints the
difference per subscription.  A JSON record goes to
bench/results/memory-<time>.json.  The node is stopped at the end unless
--keep is given (an attached server is never stopped).
"""
import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def proc_status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def children(pid):
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True, check=False).stdout
        return [int(x) for x in out.split()]
    except OSError:
        return []


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def memory(pid):
    kids = children(pid)
    m = {"rss_kb": proc_status_kb(pid, "VmRSS"), "hwm_kb": proc_status_kb(pid, "VmHWM"),
         "children": len(kids)}
    if kids:
        vals = [pss_kb(p) for p in [pid] + kids]
        m["pss_tree_kb"] = sum(v for v in vals if v is not None)
    return m


def hdr_lines(data):
    """First line and header lines (bytes) of a SIP message."""
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    return lines[0], lines[1:]


def header(lines, *names):
    for ln in lines:
        k, sep, v = ln.partition(b":")
        if sep and k.strip().lower() in names:
            return v.strip()
    return None


class Client:
    T1 = 0.5
    MAX_TRIES = 6
    NOTIFY_WAIT = 10.0

    def __init__(self, target, run_id, window):
        self.target = target
        self.run_id = run_id
        self.window = window
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.lport = self.sock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.pending = {}   # call-id -> [index, tries, next_retx, got_2xx, got_notify, deadline]
        self.stats = {"ok": 0, "failed": 0, "rejected": 0, "timeouts": 0, "retransmissions": 0,
                      "notifies": 0, "notify_terminated": 0, "send_errors": 0}
        self.fail_codes = {}

    def subscribe_msg(self, prefix, i):
        dom = self.target[0]
        w, p = f"w{prefix}-{i}", f"p{prefix}-{i}"
        return (f"SUBSCRIBE sip:{p}@{dom} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.lport};branch=z9hG4bK{prefix}x{i};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:{w}@{dom}>;tag=t{prefix}x{i}\r\n"
                f"To: <sip:{p}@{dom}>\r\n"
                f"Call-ID: {prefix}-{i}@memory.bench\r\n"
                f"CSeq: 1 SUBSCRIBE\r\n"
                f"Contact: <sip:{w}@127.0.0.1:{self.lport}>\r\n"
                f"Event: presence\r\n"
                f"Accept: application/pidf+xml\r\n"
                f"Expires: 3600\r\n"
                f"User-Agent: bench-memory\r\n"
                f"Content-Length: 0\r\n\r\n").encode()

    def send(self, msg):
        try:
            self.sock.sendto(msg, self.target)
        except (BlockingIOError, InterruptedError):
            self.stats["send_errors"] += 1   # the retransmission timer covers it

    REPLY_HEADERS = (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")

    def reply(self, lines, status):
        """Answer a request (given by its header lines) with a bodyless response."""
        keep = [ln for ln in lines if ln.split(b":", 1)[0].strip().lower() in self.REPLY_HEADERS]
        self.send(b"SIP/2.0 " + status + b"\r\n" + b"\r\n".join(keep)
                  + b"\r\nContent-Length: 0\r\n\r\n")

    def handle(self, data):
        first, lines = hdr_lines(data)
        cid = header(lines, b"call-id", b"i")
        if first.startswith(b"SIP/2.0 "):
            st = self.pending.get(cid)
            if st is None or not (header(lines, b"cseq") or b"").endswith(b"SUBSCRIBE"):
                return
            try:
                code = int(first.split()[1])
            except (IndexError, ValueError):
                return
            if code < 200:
                st[2] = time.monotonic() + 4.0   # provisional: stop retransmitting so often
                return
            if code >= 300:
                self.stats["rejected"] += 1
                self.fail_codes[code] = self.fail_codes.get(code, 0) + 1
                self.finish(cid, ok=False)
                return
            if not st[3]:
                st[3] = True
                st[5] = time.monotonic() + self.NOTIFY_WAIT
                if st[4]:
                    self.finish(cid, ok=True)
        elif first.startswith(b"NOTIFY "):
            self.reply(lines, b"200 OK")
            self.stats["notifies"] += 1
            ss = header(lines, b"subscription-state") or b""
            if ss.lower().startswith(b"terminated"):
                self.stats["notify_terminated"] += 1
            st = self.pending.get(cid)
            if st is not None and not st[4]:
                st[4] = True
                if st[3]:
                    self.finish(cid, ok=True)
        elif not first.startswith(b"ACK "):
            # anything else: refuse, so that it is not retransmitted
            self.reply(lines, b"405 Method Not Allowed")

    def finish(self, cid, ok):
        st = self.pending.pop(cid, None)
        if st is None:
            return
        self.stats["ok" if ok else "failed"] += 1

    def drain(self, timeout):
        for _key, _ev in self.sel.select(timeout):
            for _ in range(2000):
                try:
                    data = self.sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                self.handle(data)

    def timers(self, msgs):
        now = time.monotonic()
        for cid, st in list(self.pending.items()):
            if st[3]:
                if now > st[5]:            # 2xx but no NOTIFY
                    self.stats["timeouts"] += 1
                    self.finish(cid, ok=False)
            elif now >= st[2]:
                if st[1] >= self.MAX_TRIES:
                    self.stats["timeouts"] += 1
                    self.finish(cid, ok=False)
                else:
                    st[1] += 1
                    st[2] = now + min(4.0, self.T1 * 2 ** (st[1] - 1))
                    self.stats["retransmissions"] += 1
                    self.send(msgs[cid])

    def run(self, prefix, n, progress=True):
        """Create n subscriptions; returns the wall time taken."""
        msgs = {}
        t0 = time.monotonic()
        last_timer = last_print = t0
        i = 0
        while i < n or self.pending:
            while i < n and len(self.pending) < self.window:
                i += 1
                msg = self.subscribe_msg(prefix, i)
                cid = f"{prefix}-{i}@memory.bench".encode()
                msgs[cid] = msg
                self.pending[cid] = [i, 1, time.monotonic() + self.T1, False, False, 0.0]
                self.send(msg)
            self.drain(0.05)
            now = time.monotonic()
            if now - last_timer > 0.1:
                self.timers(msgs)
                for cid in [c for c in msgs if c not in self.pending]:
                    del msgs[cid]
                last_timer = now
            if progress and now - last_print >= 5:
                done = self.stats["ok"] + self.stats["failed"]
                print(f"  {done}/{n} done ({self.stats['ok']} ok, {self.stats['failed']} failed), "
                      f"{done / (now - t0):.0f}/s", flush=True)
                last_print = now
        return time.monotonic() - t0

    def idle(self, seconds):
        """Keep answering NOTIFYs for a while."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.drain(0.05)


def node_sh(*args):
    return subprocess.run([os.path.join(HERE, "node.sh"), *args], capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--subscriptions", type=int, default=100000)
    ap.add_argument("--port", type=int, default=5080, help="server SIP port (default 5080)")
    ap.add_argument("--window", type=int, default=500, help="max outstanding subscriptions (500)")
    ap.add_argument("--warmup", type=int, default=1000, help="uncounted warm-up subscriptions (1000)")
    ap.add_argument("--attach", type=int, metavar="PID", help="measure this running server instead")
    ap.add_argument("--config", help="node config for node.sh -c")
    ap.add_argument("--keep", action="store_true", help="leave the node running")
    ap.add_argument("node_args", nargs="*", help="extra presence-node args (after --)")
    a = ap.parse_args()
    settle = float(os.environ.get("SETTLE_S", "2"))

    started = False
    if a.attach:
        pid = a.attach
        if not os.path.exists(f"/proc/{pid}"):
            sys.exit(f"memory.py: no process {pid}")
    else:
        args = ["start", "-p", str(a.port)]
        if a.config:
            args += ["-c", a.config]
        if a.node_args:
            args += ["--", *a.node_args]
        r = node_sh(*args)
        if r.returncode != 0:
            sys.exit(f"memory.py: node did not start:\n{r.stdout}{r.stderr}")
        print(r.stdout.strip())
        started = True
        pid = int(node_sh("pid", "-p", str(a.port)).stdout.strip())
    try:
        cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip()
        run_id = f"m{os.getpid()}t{int(time.time()) % 100000}"
        cl = Client(("127.0.0.1", a.port), run_id, a.window)
        if a.warmup:
            cl.run(run_id + "wu", a.warmup, progress=False)
            print(f"warm-up: {cl.stats['ok']}/{a.warmup} subscriptions ok")
        cl.idle(1.0)
        before = memory(pid)
        base = dict(cl.stats)
        print(f"before: VmRSS {before['rss_kb']} kB"
              + (f", Pss of {before['children'] + 1} processes {before['pss_tree_kb']} kB"
                 if before["children"] else ""), flush=True)
        print(f"creating {a.subscriptions} subscriptions (window {a.window}) on 127.0.0.1:{a.port} ...",
              flush=True)
        wall = cl.run(run_id, a.subscriptions)
        cl.idle(settle)
        alive = os.path.exists(f"/proc/{pid}")
        after = memory(pid) if alive else {}
        st = {k: cl.stats[k] - base[k] for k in cl.stats}
        res = {"server_pid": pid, "server_cmdline": cmd, "port": a.port,
               "subscriptions_requested": a.subscriptions, "ok": st["ok"], "failed": st["failed"],
               "client": st, "fail_codes": cl.fail_codes, "wall_s": round(wall, 2),
               "subscriptions_per_s": round(st["ok"] / wall, 1) if wall else None,
               "warmup": a.warmup, "window": a.window, "before": before, "after": after,
               "server_alive": alive}
        if alive and st["ok"]:
            d_rss = (after["rss_kb"] - before["rss_kb"]) * 1024
            res["rss_delta_bytes"] = d_rss
            res["rss_bytes_per_subscription"] = round(d_rss / st["ok"], 1)
            if before.get("children") or after.get("children"):
                d_pss = (after.get("pss_tree_kb", 0) - before.get("pss_tree_kb", 0)) * 1024
                res["pss_delta_bytes"] = d_pss
                res["pss_bytes_per_subscription"] = round(d_pss / st["ok"], 1)
        print(f"done: {st['ok']} ok, {st['failed']} failed (rejected {st['rejected']}, timeouts "
              f"{st['timeouts']}), {st['retransmissions']} SUBSCRIBE retransmissions, "
              f"{st['notifies']} NOTIFYs answered, in {wall:.1f} s "
              f"({res['subscriptions_per_s']}/s)")
        if cl.fail_codes:
            print(f"  final responses >= 300: {cl.fail_codes}")
        if not alive:
            print("server is gone: no 'after' figure")
        else:
            print(f"after:  VmRSS {after['rss_kb']} kB (VmHWM {after['hwm_kb']} kB)"
                  + (f", Pss of {after['children'] + 1} processes {after['pss_tree_kb']} kB"
                     if after.get("children") else ""))
            if st["ok"]:
                print(f"RSS growth {res['rss_delta_bytes'] / 1048576:.1f} MiB over {st['ok']} "
                      f"subscriptions = {res['rss_bytes_per_subscription']:.0f} bytes per subscription")
                if "pss_bytes_per_subscription" in res:
                    print(f"Pss growth (all processes) {res['pss_delta_bytes'] / 1048576:.1f} MiB = "
                          f"{res['pss_bytes_per_subscription']:.0f} bytes per subscription")
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        path = os.path.join(HERE, "results", time.strftime("memory-%Y%m%d-%H%M%S.json"))
        with open(path, "w") as f:
            json.dump(res, f, indent=1)
        print(f"record: {path}")
        return 0 if alive and st["ok"] else 1
    finally:
        if started and not a.keep:
            print(node_sh("stop", "-p", str(a.port)).stdout.strip())


if __name__ == "__main__":
    sys.exit(main())
