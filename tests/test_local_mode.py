"""Local mode end to end: ``presence-cluster up`` a real example (private
PostgreSQL, real node processes), SIGKILL the owner of a tag, and check that
the tag is active on a survivor within 3 s (asked of the survivor itself),
that ``status`` shows the failover, and that ``down`` leaves no process;
the federation modes' node configurations (nodes of the federation example
started and answering ``/tags``); and both federation examples failed over:
federation with redundancy moves a killed node's location tag to its
partner (a watcher still gets a PUBLISH made in another location), plain
federation (memory) moves nothing, shows the node down and keeps serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from presence_operator.local.pg import bindir, free_base, postmaster_pid, run_as_postgres

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "presence-cluster")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def tags_of(admin: str, secret: str) -> dict[str, dict]:
    req = urllib.request.Request(f"http://{admin}/tags", headers={"Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(req, timeout=1) as r:
        return {t["tag"]: t for t in json.load(r)["items"]}


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
        except (OSError, ValueError, KeyError, TypeError):
            v = None
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def cli(d: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args, "--dir", str(d)], capture_output=True, text=True, timeout=60)


class Upped:
    """``presence-cluster up`` of an example in the background (supervised),
    waited for Ready; ``close`` runs ``down`` and checks every node is gone."""

    def __init__(self, tmp_path: Path, example: str, n: int, *extra: str) -> None:
        self.d = tmp_path / "state"
        sip, admin, channel = free_base(n), free_base(n), free_base(n)
        self._log = (tmp_path / "up.log").open("w")
        self.up = subprocess.Popen([EXE, "up", str(ROOT / "examples" / example / "cluster.yaml"), "--dir", str(self.d),
                                    "--sip-base", str(sip), "--admin-base", str(admin), "--cluster-base", str(channel),
                                    *extra], stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp_path)
        self.run: dict = {}
        try:
            wait_for(lambda: self.status()["phase"] == "Ready", 60, "cluster Ready")
            self.run = json.loads((self.d / "run.json").read_text())
            self.secret = (self.d / "admin-secret").read_text().strip()
        except BaseException:
            self.close()
            print((tmp_path / "up.log").read_text()[-3000:])  # why it never got Ready
            raise

    def status(self) -> dict:
        return json.loads((self.d / "status.json").read_text())

    def tags(self, node: str) -> dict[str, dict]:
        return tags_of(self.run["nodes"][node]["admin"], self.secret)

    def admin_get(self, node: str, path: str) -> dict:
        req = urllib.request.Request(f"http://{self.run['nodes'][node]['admin']}{path}",
                                     headers={"Authorization": f"Bearer {self.secret}"})
        with urllib.request.urlopen(req, timeout=1) as r:
            return json.load(r)

    def sip(self, node: str) -> tuple[str, int]:
        host, port = self.run["nodes"][node]["sip"].rsplit(":", 1)
        return host, int(port)

    def close(self) -> None:
        res = self.down = cli(self.d, "down")
        self.up.wait(timeout=10)
        self._log.close()
        assert res.returncode == 0, res.stderr
        pids = [n["pid"] for n in self.run.get("nodes", {}).values()]
        pids += [p["pid"] for p in self.run.get("postgres", {}).values()]
        wait_for(lambda: not any(alive(p) for p in pids), 10, "every process gone")


@pytest.mark.parametrize("example, tag, victim, survivors", [
    ("01-ha", "vip", "l1-0", {"l1-1"}),
    ("02-load-balancing", "l1-1", "l1-1", {"l1-0", "l1-2"}),
])
def test_sigkill_owner_moves_tag_and_down_cleans_up(tmp_path, example, tag, victim, survivors):
    c = Upped(tmp_path, example, 3)
    d, run = c.d, c.run
    try:
        assert (d / "admin-secret").stat().st_mode & 0o777 == 0o600
        assert c.tags(victim)[tag]["state"] == "active"
        before = c.tags(victim)[tag]["epoch"]

        killed = time.monotonic()
        os.kill(run["nodes"][victim]["pid"], signal.SIGKILL)

        def moved():
            for n in survivors:
                t = c.tags(n)[tag]
                if t["state"] == "active":
                    return n, t["epoch"]
            return None

        owner, epoch = wait_for(moved, 3.0, f"{tag} active on one of {survivors}")
        took = time.monotonic() - killed
        print(f"\n{example}: SIGKILL {victim} -> {tag} active on {owner} in {took:.2f} s")
        assert epoch > before
        others = [n for n in survivors if n != owner]
        assert all(c.tags(n)[tag]["state"] == "backup" for n in others)

        st = wait_for(lambda: (s := c.status()).get("lastFailover") and s, 2, "lastFailover in status")
        assert st["lastFailover"]["to"] == owner and tag in st["lastFailover"]["tags"]
        assert st["failoverCount"] == 1 and st["tags"][tag]["owner"] == owner and st["readyNodes"] == len(survivors)
        out = cli(d, "status").stdout
        assert f"{victim}->{owner}" in out and f"{tag}={owner}" in out and f"{len(survivors)}/{len(survivors) + 1}" in out
    finally:
        c.close()
    assert not (d / "run.json").exists()
    assert all(not Path(p["root"]).exists() for p in run["postgres"].values())


def test_database_restart_moves_no_tag_and_down_stops_the_restarted_server(tmp_path):
    """#13.3: the HA example's PostgreSQL stopped for 3 s (three times
    detectionSeconds: both nodes judged down) and started again: both nodes
    serve again within a second or two, and vip stays on l1-0 at its epoch
    (an outage every node sees alike is no node failure), whichever node is
    ready first.  #13.4: ``down`` then stops the restarted server (a new
    pid, not the one recorded at start) and says which."""
    c = Upped(tmp_path, "01-ha", 3)
    run = c.run
    info = run["postgres"]["l1"]
    root = Path(info["root"])
    pg_ctl = str(bindir() / "pg_ctl")
    try:
        before = c.tags("l1-0")["vip"]
        assert before["state"] == "active"
        run_as_postgres(pg_ctl, "-D", str(root / "data"), "-m", "fast", "-w", "stop")
        time.sleep(3.0)
        options = f"-p {info['port']} -k {root / 'sock'} -c listen_addresses=127.0.0.1"
        run_as_postgres(pg_ctl, "-D", str(root / "data"), "-o", options, "-l", str(root / "log"), "-w", "start")
        back = time.monotonic()

        def ready(node: str) -> bool:
            with urllib.request.urlopen(f"http://{run['nodes'][node]['admin']}/readyz", timeout=1) as r:
                return r.status == 200

        wait_for(lambda: all(ready(n) for n in run["nodes"]), 10, "both nodes ready")
        took = time.monotonic() - back
        print(f"\nPostgreSQL back after 3 s: both nodes ready {took:.2f} s later")
        assert took < 3.0, took
        time.sleep(2.0)  # twice detectionSeconds: a move would have been made by now
        assert c.tags("l1-0")["vip"] == before and c.tags("l1-1")["vip"]["state"] == "backup"
        st = c.status()
        assert st["failoverCount"] == 0 and st["tags"]["vip"]["owner"] == "l1-0" and st["phase"] == "Ready"
        assert "StorageUnavailable" in (tmp_path / "up.log").read_text()
        restarted = postmaster_pid(root / "data")
        assert restarted is not None and restarted != info["pid"]
    finally:
        c.close()
    assert not alive(restarted)
    assert f"PostgreSQL of l1 (pid {restarted}" in c.down.stdout and not root.exists()


def test_federation_example_starts_federated_nodes(tmp_path):
    """``up`` of the federation example: one node per location, memory
    storage, its own tag active, every other node as a peer on its cluster
    channel port, a 0600 cluster secret (federation itself is the node's
    tests' business)."""
    from presence_node.config import Config

    c = Upped(tmp_path, "03-federation", 3)
    d, run = c.d, c.run
    try:
        assert run["mode"] == "federation" and not run["postgres"]
        assert (d / "cluster-secret").stat().st_mode & 0o777 == 0o600
        assert len((d / "cluster-secret").read_text().strip()) >= 32
        names = ["paris-0", "berlin-0", "madrid-0"]
        assert sorted(run["nodes"]) == sorted(names)
        channel = int(run["nodes"]["paris-0"]["cluster"].rsplit(":", 1)[1])
        for i, name in enumerate(names):
            n = run["nodes"][name]
            assert n["cluster"] == f"127.0.0.1:{channel + i}"
            shared = {t: v["state"] for t, v in c.tags(name).items() if not t.startswith("~")}
            assert shared == {name: "active"}  # its own tag only (plus its private ~tag)
            cfg = Config.model_validate(yaml.safe_load((d / "nodes" / name / "node.yaml").read_text()))
            assert cfg.storage.backend == "memory" and cfg.default_tag == name
            fed = cfg.federation
            assert fed.mode == "on-demand-sharing" and fed.listen == n["cluster"] and cfg.location == name
            assert Path(fed.secret_file) == (d / "cluster-secret").resolve()
            assert [(p.id, p.address, p.location) for p in fed.peers] == [
                (other, f"127.0.0.1:{channel + j}", other) for j, other in enumerate(names) if other != name]
        assert "paris-0=paris-0" in cli(d, "status").stdout
    finally:
        c.close()


def test_federation_redundancy_configurations(tmp_path):
    """The node configurations ``up`` writes for federationRedundancy (no
    process started): the location's database, its tag active on node 0,
    the spec location as federation location, every other node a peer."""
    from presence_node.config import Config
    from presence_operator import spec as specs
    from presence_operator.local import launch

    m = specs.load_manifest(yaml.safe_load((ROOT / "examples" / "04-federation-redundancy" / "cluster.yaml").read_text()))
    nodes = specs.nodes(m.spec)
    channel = {n.name: f"127.0.0.1:{7060 + n.ordinal}" for n in nodes}
    for n in nodes:
        dsn = tmp_path / "db" / f"{n.location}.dsn"
        cfg = Config.model_validate(launch.node_config(m, n, tmp_path, f"127.0.0.1:{5060 + n.ordinal}",
                                                       f"127.0.0.1:{8081 + n.ordinal}", dsn, channel))
        assert cfg.storage.backend == "postgres" and cfg.storage.dsn_file == dsn
        assert cfg.sharing_tags == {n.location: "active" if n.index == 0 else "backup"}
        assert cfg.default_tag == n.location and cfg.location == n.location
        assert cfg.federation.mode == "on-demand-sharing" and cfg.federation.listen == channel[n.name]
        assert [(p.id, p.address, p.location) for p in cfg.federation.peers] == [
            (x.name, channel[x.name], x.location) for x in nodes if x.name != n.name]
    # The other modes get no federation section.
    ha = specs.load_manifest(yaml.safe_load((ROOT / "examples" / "01-ha" / "cluster.yaml").read_text()))
    n0 = specs.nodes(ha.spec)[0]
    assert "federation" not in launch.node_config(ha, n0, tmp_path, "127.0.0.1:5060", "127.0.0.1:8081", None,
                                                  {n0.name: "127.0.0.1:7060"})


def test_invalid_manifest_names_the_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: presence.example.org/v1alpha1\nkind: PresenceCluster\nmetadata: {name: x}\n"
                 "spec: {mode: ha, locations: [{name: a, nodes: 2, database: {secretRef: {name: s}}}],"
                 " failover: {detectionSeconds: 0}}\n")
    res = subprocess.run([EXE, "up", str(f), "--dir", str(tmp_path / "s")], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "spec.failover.detectionSeconds" in res.stderr


def test_node_config_the_nodes_would_refuse_is_refused_before_anything_starts(tmp_path):
    """#13.7: a bad ``spec.nodeConfig`` key stops ``up`` with exit 2 naming
    it, before a PostgreSQL or a node is started."""
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: presence.example.org/v1alpha1\nkind: PresenceCluster\nmetadata: {name: x}\n"
                 "spec: {mode: federation, locations: [{name: a, nodes: 1}],"
                 " nodeConfig: {subscription_expiry: {min: 5000}}}\n")
    res = subprocess.run([EXE, "up", str(f), "--dir", str(tmp_path / "s")], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "spec.nodeConfig.subscription_expiry" in res.stderr, res.stderr
    assert not (tmp_path / "s").exists()


def test_switchover_fence_and_restart_from_the_command_line(tmp_path):
    """Manual operations in local mode: ``switchover`` moves and pins a tag,
    ``fence`` vacates a node and keeps tags off it, ``--clear`` lifts them,
    ``restart`` brings a killed node back (as a backup: ownership is in the
    shared database)."""
    c = Upped(tmp_path, "01-ha", 2)
    d = c.d
    try:
        status, run = c.status, c.run
        vip = lambda n: c.tags(n)["vip"]  # noqa: E731
        assert vip("l1-0")["state"] == "active"
        e0 = vip("l1-0")["epoch"]

        res = cli(d, "switchover", "vip", "l1-1")
        assert res.returncode == 0, res.stderr
        wait_for(lambda: vip("l1-1")["state"] == "active", 3, "vip switched over to l1-1")
        assert vip("l1-1")["epoch"] == e0 + 2  # deactivation of l1-0, then activation above it
        st = wait_for(lambda: ((s := status()).get("lastFailover") or {}).get("reason") == "switchover" and s, 3, "switchover recorded")
        assert st["lastFailover"]["from"] == "l1-0" and st["switchovers"] == {"vip": "l1-1"}
        assert "switchover: vip -> l1-1" in cli(d, "status").stdout

        assert cli(d, "fence", "l1-1").returncode == 0
        wait_for(lambda: vip("l1-0")["state"] == "active", 3, "vip vacated from fenced l1-1")
        st = wait_for(lambda: ((s := status()).get("lastFailover") or {}).get("reason") == "fenced" and s, 3, "fencing recorded")
        assert st["fenced"] == ["l1-1"] and "fenced: l1-1" in cli(d, "status").stdout
        assert cli(d, "switchover", "vip", "--clear").returncode == 0
        assert cli(d, "fence", "--clear").returncode == 0
        wait_for(lambda: not status()["fenced"] and not status()["switchovers"], 3, "operations lifted")
        time.sleep(0.5)
        assert vip("l1-0")["state"] == "active"  # failback: never, and no pin left: it stays

        bad = cli(d, "switchover", "vip", "l9-9")
        assert bad.returncode == 2 and "no node 'l9-9'" in bad.stderr
        assert cli(d, "fence", "nobody").returncode == 2

        old = run["nodes"]["l1-0"]["pid"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: vip("l1-1")["state"] == "active", 3, "vip on l1-1 after the kill")
        res = cli(d, "restart", "l1-0")
        assert res.returncode == 0, res.stderr
        run = c.run = json.loads((d / "run.json").read_text())
        assert run["nodes"]["l1-0"]["pid"] != old and alive(run["nodes"]["l1-0"]["pid"])
        assert vip("l1-0")["state"] == "backup" and vip("l1-1")["state"] == "active"
        wait_for(lambda: status()["readyNodes"] == 2 and status()["phase"] == "Ready", 5, "both nodes ready again")
    finally:
        c.close()


async def test_federation_redundancy_sigkill_moves_a_location_tag_to_its_partner(tmp_path):
    """``up`` of the federation-with-redundancy example (three locations of
    two nodes, three PostgreSQL): SIGKILL paris-0, where tag ``paris`` is
    active: within 3 s paris-1 (same location, same database) reports it
    active at a higher epoch, status and ``presence-cluster status`` show
    the move, the other locations' tags stay put, another location's node
    sees the new owner, and a watcher that subscribed through paris-0 before
    the kill gets a PUBLISH made through berlin-0 afterwards."""
    import asyncio

    from bodies import pidf
    from sipclient import SipClient

    BOB = "sip:bob@example.com"
    c = await asyncio.to_thread(Upped, tmp_path, "04-federation-redundancy", 6)
    w = None
    try:
        homes = {loc: f"{loc}-0" for loc in ("paris", "berlin", "madrid")}
        for loc, home in homes.items():
            assert c.tags(home)[loc]["state"] == "active"
            assert c.tags(f"{loc}-1")[loc]["state"] == "backup"
        before = c.tags("paris-0")["paris"]["epoch"]

        w = await SipClient(c.sip("paris-0"), "udp", "alice").open()
        resp, dlg = await w.subscribe(BOB)
        assert resp.code in (200, 202)
        await w.dialog_notifies(dlg, 1)
        pub = await SipClient(c.sip("berlin-0"), "udp", "bob").open()

        killed = time.monotonic()
        os.kill(c.run["nodes"]["paris-0"]["pid"], signal.SIGKILL)
        await asyncio.to_thread(wait_for, lambda: c.tags("paris-1")["paris"]["state"] == "active", 3.0,
                                "paris active on paris-1")
        took = time.monotonic() - killed
        print(f"\n04-federation-redundancy: SIGKILL paris-0 -> paris active on paris-1 in {took:.2f} s")
        assert c.tags("paris-1")["paris"]["epoch"] > before
        for loc, home in homes.items():
            if loc != "paris":
                assert c.tags(home)[loc]["state"] == "active" and c.tags(f"{loc}-1")[loc]["state"] == "backup"

        st = await asyncio.to_thread(wait_for, lambda: (s := c.status())["lastFailover"] and s, 2, "lastFailover")
        assert st["lastFailover"]["from"] == "paris-0" and st["lastFailover"]["to"] == "paris-1"
        assert st["lastFailover"]["tags"] == ["paris"] and st["failoverCount"] == 1
        assert {t: r["owner"] for t, r in st["tags"].items()} == {"paris": "paris-1", "berlin": "berlin-0",
                                                                    "madrid": "madrid-0"}
        assert st["readyNodes"] == 5 and st["phase"] == "Degraded"
        out = cli(c.d, "status").stdout
        assert "paris-0->paris-1 paris" in out and "paris=paris-1" in out and "5/6" in out

        # Another location learns the new owner over the cluster channel.
        def seen() -> bool:
            return {t["tag"]: t["owner"] for t in c.admin_get("berlin-0", "/cluster")["tags"]}.get("paris") == "paris-1"
        await asyncio.to_thread(wait_for, seen, 3.0, "berlin-0 sees paris owned by paris-1")

        # The watcher's subscription (paris's database) is now served by paris-1.
        assert (await pub.publish(pidf(BOB, "open", note="after-failover"))).code == 200
        notes = await w.wait_notifies(1, 5.0, lambda m: m.headers.get("call-id") == dlg.call_id
                                      and b"after-failover" in m.body)
        assert notes
        pub.close()
    finally:
        if w is not None:
            w.close()
        await asyncio.to_thread(c.close)


async def test_federation_sigkill_leaves_the_tag_with_its_dead_node_and_others_serve(tmp_path):
    """``up`` of the federation example (three single-node locations, memory
    storage), SIGKILL berlin-0: its tag cannot move (nobody else holds its
    data), so the supervisor judges the node down and defers (event in its
    log), status shows 2/3 ready, Degraded, tag ``berlin`` still owned by
    berlin-0 and no failover; paris-0 and madrid-0 keep their tags and keep
    serving (a PUBLISH through paris-0 reaches a watcher through madrid-0).
    ``restart berlin-0`` brings the tag back with its node: Ready again."""
    import asyncio

    from bodies import pidf
    from sipclient import SipClient

    c = await asyncio.to_thread(Upped, tmp_path, "03-federation", 3)
    clients: list[SipClient] = []
    try:
        names = ("paris-0", "berlin-0", "madrid-0")
        epochs = {n: c.tags(n)[n]["epoch"] for n in names}
        assert all(c.tags(n)[n]["state"] == "active" for n in names)

        os.kill(c.run["nodes"]["berlin-0"]["pid"], signal.SIGKILL)
        st = await asyncio.to_thread(wait_for, lambda: (s := c.status())["nodes"]["berlin-0"]["health"] == "down" and s,
                                     4.0, "berlin-0 judged down")
        await asyncio.sleep(1.0)  # several more ticks: nothing may move meanwhile
        st = c.status()
        assert st["phase"] == "Degraded" and st["readyNodes"] == 2 and not st["nodes"]["berlin-0"]["ready"]
        conditions = {c["type"]: c["status"] for c in st["conditions"]}
        assert conditions == {"Ready": "False", "Degraded": "True", "FailingOver": "False"}
        assert {t: (r["owner"], r["epoch"]) for t, r in st["tags"].items()} == {n: (n, epochs[n]) for n in names}
        assert st["failoverCount"] == 0 and "lastFailover" not in st and not st.get("intent")
        for n in ("paris-0", "madrid-0"):
            tags = {t: (v["state"], v["epoch"]) for t, v in c.tags(n).items() if not t.startswith("~")}
            assert tags == {n: ("active", epochs[n])}  # its own tag only: berlin landed nowhere
        log = (tmp_path / "up.log").read_text()
        assert "FailoverDeferred: tag berlin-0: owner berlin-0 is down" in log
        assert "active on" not in log  # no tag was activated anywhere
        out = cli(c.d, "status").stdout
        assert "2/3" in out and "berlin-0=berlin-0" in out and "Degraded" in out
        assert [ln.split()[2] for ln in out.splitlines() if ln.startswith("berlin-0 ")] == ["false"]

        watcher = await SipClient(c.sip("madrid-0"), "udp", "alice").open()
        pub = await SipClient(c.sip("paris-0"), "udp", "bob").open()
        clients += [watcher, pub]
        assert (await pub.publish(pidf("sip:bob@example.com", "open", note="paris-alive"))).code == 200
        resp, dlg = await watcher.subscribe("sip:bob@example.com")
        assert resp.code in (200, 202)
        notes = await watcher.wait_notifies(1, 3.0, lambda m: m.headers.get("call-id") == dlg.call_id
                                            and b"paris-alive" in m.body)
        assert notes

        res = await asyncio.to_thread(cli, c.d, "restart", "berlin-0")
        assert res.returncode == 0, res.stderr
        c.run = json.loads((c.d / "run.json").read_text())
        await asyncio.to_thread(wait_for, lambda: c.status()["phase"] == "Ready", 5.0, "Ready again")
        st = c.status()
        assert st["readyNodes"] == 3 and st["tags"]["berlin-0"]["owner"] == "berlin-0" and st["failoverCount"] == 0
        assert c.tags("berlin-0")["berlin-0"]["state"] == "active"
    finally:
        for cl in clients:
            cl.close()
        await asyncio.to_thread(c.close)


def test_rendered_pods_keep_run_as_non_root_as_the_kubelet_would(tmp_path):
    """#16: ``local/pods.py`` refuses runAsNonRoot with runAsUser 0, and with
    no runAsUser asks for the image's own user to be checked."""
    import copy

    from presence_operator import builders, spec as specs
    from presence_operator.builders import meta
    from presence_operator.local import pods

    manifest = specs.load_manifest(yaml.safe_load((ROOT / "examples" / "03-federation" / "cluster.yaml").read_text()))
    owner = meta.Owner(manifest.name, "local", "local", manifest.spec)
    objects = builders.render(owner)
    ips = {meta.pod_name(owner, n): f"127.0.1.{n.ordinal + 1}" for n in specs.nodes(manifest.spec)}
    secrets = {meta.secret_name(owner): {"admin": b"a" * 32, "cluster": b"c" * 32}}
    assert not any(p.image_user_must_be_non_root for p in pods.pods(objects, secrets, ips, "local", tmp_path))
    for uid, expect in ((None, True), (0, "runAsUser 0")):
        changed = copy.deepcopy(objects)
        for o in changed:
            if o["kind"] == "StatefulSet":
                sc = o["spec"]["template"]["spec"]["securityContext"]
                sc.pop("runAsUser")
                if uid is not None:
                    sc["runAsUser"] = uid
        if expect is True:
            assert all(p.image_user_must_be_non_root for p in pods.pods(changed, secrets, ips, "local", tmp_path))
        else:
            with pytest.raises(pods.PodError, match=expect):
                pods.pods(changed, secrets, ips, "local", tmp_path)
