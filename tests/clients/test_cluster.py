"""The four-node cluster from `hf-mirror cluster up` (topology.toml) against the fake Hub: any node
answers, a blob crosses the upstream link once for the whole cluster, a peer dying mid-transfer does
not fail the download, metadata recorded through one node is known to all (Raft catalog), and losing
the catalog leader elects another without losing writes.

The cluster suite runs once, in the newest client's venv: it tests the nodes, not the client."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import HUB_VERSION, ROOT, clean_env, http_request, mirror_bin, stop_process, wait_until

pytestmark = pytest.mark.skipif(HUB_VERSION < (2, 0, 0), reason="the cluster suite runs once, in the newest client's venv")

LFS = "/org/model/resolve/main/model.safetensors"
NODE_LINE = re.compile(r"^node (\S+) (http://\S+)$")
DNS_LINE = re.compile(r"^dns (\S+) (\S+:\d+)$")
RSYNC_LINE = re.compile(r"^rsync (\S+) (\S+:\d+)$")
OPERATOR_LINE = re.compile(r"^operator (\S+) (http://\S+)$")


class Cluster:
    def __init__(self, upstream: str, workdir: Path):
        self.workdir = workdir
        self.data_dir = workdir / "cluster"
        workdir.mkdir(parents=True, exist_ok=True)
        self.out = workdir / "up.out"
        self.proc = subprocess.Popen(
            [str(mirror_bin()), "cluster", "up", "--config", str(ROOT / "topology.toml"), "--data-dir", str(self.data_dir),
             "--upstream", upstream, "--ref-ttl", "5s"],
            stdout=open(self.out, "wb"), stderr=open(workdir / "up.err", "wb"), stdin=subprocess.DEVNULL, env=clean_env(),
        )
        deadline = time.monotonic() + 90
        self.nodes: dict[str, str] = {}
        while len(self.nodes) < 4:
            assert self.proc.poll() is None, f"cluster up exited: {(workdir / 'up.err').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "cluster up did not print four node lines"
            self.nodes = {m.group(1): m.group(2) for m in map(NODE_LINE.match, self.out.read_text().splitlines()) if m}
            time.sleep(0.1)
        # Every node's operator port (status, drain, metrics), and the token they share.
        self.operators = {m.group(1): m.group(2) for m in map(OPERATOR_LINE.match, self.out.read_text().splitlines()) if m}
        assert sorted(self.operators) == sorted(self.nodes), self.out.read_text()
        self.token = (self.data_dir / "operator-token").read_text().strip()

    def operator(self, name: str, method: str, path: str, **kw):
        """A request to node `name`'s operator port with the cluster's operator token."""
        return http_request(self.operators[name], method, path, headers={"Authorization": f"Bearer {self.token}"}, **kw)

    def stop(self) -> None:
        stop_process(self.proc, grace=30)

    def log(self, name: str) -> str:
        return (self.data_dir / f"{name}.log").read_text(errors="replace")

    def node_pid(self, name: str) -> int:
        local = str(self.data_dir / "topology.local.toml")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv]
            if local in args and "--node" in args and args[args.index("--node") + 1] == name:
                return int(entry.name)
        raise AssertionError(f"no process for node {name}")

    def has_blob(self, name: str, etag: str) -> bool:
        return (self.data_dir / name / "blobs" / etag[:2] / etag).exists()


@pytest.fixture
def cluster(fake_hub, tmp_path):
    c = Cluster(fake_hub.url, tmp_path / "c")
    try:
        yield c
    finally:
        c.stop()


def cdn_gets(fake_hub, sha256: str) -> list[dict]:
    return [r for r in fake_hub.requests() if r["server"] == "cdn" and r["method"] == "GET" and sha256 in r["path"]]




def fetched_upstream(log: str) -> bool:
    """Whether a node's log shows it fetching a blob from upstream (alone, or after asking peers)."""
    return "source=upstream" in log or "filling from upstream" in log


def test_cluster_up_prints_every_node_and_each_answers(cluster, fake_hub):
    assert sorted(cluster.nodes) == ["ams1", "fra1", "sto1", "waw1"]
    for url in cluster.nodes.values():
        r = http_request(url, "HEAD", "/org/model/resolve/main/config.json")
        assert r.status == 200 and r.header("X-Repo-Commit") == fake_hub.sha()
    # Each node's DNS server, printed beside its node line, answers the zone (with the real dig).
    dns = {m.group(1): m.group(2) for m in map(DNS_LINE.match, cluster.out.read_text().splitlines()) if m}
    assert sorted(dns) == sorted(cluster.nodes)
    for name, address in dns.items():
        host, port = address.rsplit(":", 1)
        out = subprocess.run(["dig", f"@{host}", "-p", port, "+short", "+tries=2", f"{name}.hf-mirror.eu", "A"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        assert out == ["127.0.0.1"], (name, out)
    # And its rsync daemon, printed too, lists the read-only modules.
    rsyncd = {m.group(1): m.group(2) for m in map(RSYNC_LINE.match, cluster.out.read_text().splitlines()) if m}
    assert sorted(rsyncd) == sorted(cluster.nodes)
    for name, address in rsyncd.items():
        modules = subprocess.run(["rsync", f"rsync://{address}/"], capture_output=True, text=True, timeout=20).stdout
        assert all(module in modules for module in ("models", "datasets", "indexes")), (name, modules)
    # Every node's metrics (on its operator port) show the cluster it sees.
    for name, url in cluster.nodes.items():
        def cluster_seen():
            text = http_request(cluster.operators[name], "GET", "/metrics").body.decode()
            wanted = ['hfm_gossip_members{state="live"} 4', "hfm_raft_has_leader 1", "hfm_rsync_up 1"]
            return all(line in text.splitlines() for line in wanted)
        wait_until(cluster_seen, f"{name}'s metrics showing four live nodes, a catalog leader and rsync", timeout=30)
        assert http_request(url, "GET", "/readyz").status == 200
    # The Grafana dashboard in deploy/ only uses metric names a cluster node exports.
    exported = {line.split("{")[0].split(" ")[0] for line in http_request(cluster.operators[name], "GET", "/metrics").body.decode().splitlines()
                if line and not line.startswith("#")}
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"hfm_[a-z_]+", target["expr"])}
    assert used and used <= exported, used - exported


def test_a_blob_fetched_through_each_node_in_turn_crosses_upstream_once(cluster, fake_hub):
    meta = fake_hub.files()["model.safetensors"]
    data = fake_hub.file("org/model", "model.safetensors")
    fake_hub.reset()
    for name, url in cluster.nodes.items():
        r = http_request(url, "GET", LFS)
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == meta["sha256"], name
        wait_until(lambda: cluster.has_blob(name, meta["sha256"]), f"{name} to store the blob")
    assert len(cdn_gets(fake_hub, meta["sha256"])) == 1, cdn_gets(fake_hub, meta["sha256"])
    assert all(r["range"] is None for r in cdn_gets(fake_hub, meta["sha256"]))
    assert r.body == data


def test_four_nodes_times_eight_clients_on_one_cold_blob_fetch_it_once(cluster, fake_hub):
    meta = fake_hub.files()["model.safetensors"]
    fake_hub.throttle(1 << 20)  # ~3 s for the blob, so the 32 downloads overlap
    fake_hub.reset()
    digests: list[str | None] = []
    lock = threading.Lock()

    def download(url: str):
        r = http_request(url, "GET", LFS, timeout=120)
        with lock:
            digests.append(hashlib.sha256(r.body).hexdigest() if r.status == 200 else f"status {r.status}")

    threads = [threading.Thread(target=download, args=(url,)) for url in cluster.nodes.values() for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        fake_hub.throttle(0)
    assert digests == [meta["sha256"]] * 32
    gets = cdn_gets(fake_hub, meta["sha256"])
    assert len(gets) == 1, gets


# The topology's storage, the placement weights (bytes).
WEIGHTS = {"fra1": 1.8e15, "ams1": 6e14, "waw1": 4e14, "sto1": 4e14}


def preference_list(key: str) -> list[str]:
    """Weighted rendezvous hashing exactly as cluster/src/placement.rs specifies it, computed here
    independently (xxh3_64 of `node ‖ 0x00 ‖ key`, score = -weight / ln(u))."""
    import math

    import xxhash

    def score(node: str) -> float:
        hashed = xxhash.xxh3_64_intdigest(node.encode() + b"\0" + key.encode())
        unit = ((hashed >> 11) + 0.5) / float(1 << 53)
        return -WEIGHTS[node] / math.log(unit)

    return sorted(WEIGHTS, key=lambda node: (-score(node), node))


def test_the_fill_leader_is_the_node_placement_names(cluster, fake_hub):
    meta = fake_hub.files()["model.safetensors"]
    ranking = preference_list(meta["sha256"])
    last = ranking[-1]
    r = http_request(cluster.nodes[last], "GET", LFS)
    assert r.status == 200
    wait_until(lambda: "fill started" in cluster.log(ranking[0]), "the leader to fill")
    wait_until(lambda: fetched_upstream(cluster.log(ranking[0])), f"{ranking[0]} to fetch from upstream")
    for name in ranking[1:]:
        assert not fetched_upstream(cluster.log(name)), f"{name} fetched from upstream, not the leader"


def test_a_peer_killed_mid_transfer_does_not_fail_the_download(cluster, fake_hub):
    meta = fake_hub.files()["model.safetensors"]
    ranking = preference_list(meta["sha256"])
    leader, client_node = ranking[0], ranking[-1]
    fake_hub.throttle(256 * 1024)  # ~12 s for the blob through the leader
    result: dict = {}

    def download():
        r = http_request(cluster.nodes[client_node], "GET", LFS, timeout=180)
        result["status"], result["body"] = r.status, r.body

    thread = threading.Thread(target=download)
    try:
        thread.start()
        wait_until(lambda: cdn_gets(fake_hub, meta["sha256"]), "the leader to reach the CDN")
        wait_until(lambda: (cluster.data_dir / client_node / "tmp").exists() and any((cluster.data_dir / client_node / "tmp").iterdir()),
                   "the client's node to fill from the leader")
        time.sleep(1.0)  # bytes are on their way through the leader
        os.kill(cluster.node_pid(leader), signal.SIGKILL)
    finally:
        fake_hub.throttle(0)
    thread.join(timeout=180)
    assert not thread.is_alive()
    assert result["status"] == 200
    assert hashlib.sha256(result["body"]).hexdigest() == meta["sha256"], "the download went on from another source"
    wait_until(lambda: cluster.has_blob(client_node, meta["sha256"]), "the client's node to store the blob")


def node_status(cluster, name: str) -> dict:
    r = cluster.operator(name, "GET", "/_hfm/status")
    assert r.status == 200, r
    return r.json()


def wait_for_applied_everywhere(cluster, names) -> None:
    def converged():
        applied = {node_status(cluster, name)["raft"]["last_applied"] for name in names}
        return len(applied) == 1 and None not in applied
    wait_until(converged, "every node to apply the same catalog log")


def assert_known_without_upstream(cluster, fake_hub, names, path: str) -> None:
    """A HEAD of `path` on each of `names` is answered from the replicated catalog: a HIT, with no
    request to upstream."""
    fake_hub.reset()
    for name in names:
        r = http_request(cluster.nodes[name], "HEAD", path)
        assert r.status == 200 and r.header("X-Cache") == "HIT", (name, r.headers)
    assert fake_hub.requests() == [], "a node asked upstream for what the catalog already knew"


def test_metadata_fetched_through_one_node_is_known_to_all(cluster, fake_hub):
    names = list(cluster.nodes)
    r = http_request(cluster.nodes[names[0]], "HEAD", "/org/model/resolve/main/config.json")
    assert r.status == 200
    wait_for_applied_everywhere(cluster, names)
    assert_known_without_upstream(cluster, fake_hub, names[1:], "/org/model/resolve/main/config.json")


def test_killing_the_catalog_leader_elects_a_new_one_and_writes_go_on(cluster, fake_hub):
    names = list(cluster.nodes)
    leader = wait_until(lambda: node_status(cluster, names[0])["raft"]["leader_name"], "a catalog leader")
    survivors = [name for name in names if name != leader]
    os.kill(cluster.node_pid(leader), signal.SIGKILL)
    new_leader = wait_until(
        lambda: (lambda status: status["raft"]["leader_name"] if status["raft"]["leader_name"] not in (None, leader) else None)(
            node_status(cluster, survivors[0])),
        "a new catalog leader")
    assert new_leader in survivors
    # A write after the election (a new ref) reaches every survivor's catalog.
    r = http_request(cluster.nodes[survivors[0]], "HEAD", "/org/model/resolve/v1.0/config.json")
    assert r.status == 200
    wait_for_applied_everywhere(cluster, survivors)
    assert_known_without_upstream(cluster, fake_hub, survivors[1:], "/org/model/resolve/v1.0/config.json")


def test_a_drained_node_leaves_placement_and_catalog_leadership(cluster, fake_hub):
    meta = fake_hub.files()["model.safetensors"]
    ranking = preference_list(meta["sha256"])
    drained, client_node = ranking[0], ranking[-1]
    # Drain the blob's first-choice node.
    r = cluster.operator(drained, "POST", "/_hfm/drain", timeout=120)
    assert r.status == 200, r
    answer = r.json()
    assert answer["draining"] is True and answer["fills_finished"] is True
    wait_until(lambda: next(m for m in node_status(cluster, client_node)["members"] if m["name"] == drained)["state"] == "draining",
               "the others to see the node draining")
    # If the drained node led the catalog, it handed leadership over.
    names = list(cluster.nodes)
    wait_until(lambda: (lambda leader: leader is not None and leader != drained)(
        node_status(cluster, client_node)["raft"]["leader_name"]), "a catalog leader other than the drained node")
    r = http_request(cluster.nodes[client_node], "GET", LFS)
    assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == meta["sha256"]
    assert not fetched_upstream(cluster.log(drained)), "a draining node was chosen as fill leader"
    assert fetched_upstream(cluster.log(ranking[1])), "the next node in placement order leads the fill"
    # Draining is a POST on the operator port, with the token; the public port has no such route.
    assert cluster.operator(client_node, "GET", "/_hfm/drain").status == 405
    assert http_request(cluster.operators[client_node], "POST", "/_hfm/drain").status == 401
    assert http_request(cluster.nodes[client_node], "POST", "/_hfm/drain").status == 404


def test_draining_the_catalog_leader_hands_leadership_over(cluster):
    names = list(cluster.nodes)
    leader = wait_until(lambda: node_status(cluster, names[0])["raft"]["leader_name"], "a catalog leader")
    r = cluster.operator(leader, "POST", "/_hfm/drain", timeout=120)
    assert r.status == 200, r
    assert r.json()["catalog_leadership_handed_to"] is not None
    other = next(name for name in names if name != leader)
    wait_until(lambda: (lambda new: new is not None and new != leader)(node_status(cluster, other)["raft"]["leader_name"]),
               "leadership to move off the drained node")
    # Every node of the topology votes; nobody is left a learner.
    raft = node_status(cluster, other)["raft"]
    assert sorted(raft["voters"]) == sorted(names) and raft["learners"] == [], raft


def test_concurrent_cold_metadata_misses_on_every_node_reach_upstream_once(cluster, fake_hub):
    fake_hub.reset()
    statuses: list[int] = []
    lock = threading.Lock()

    def head(url: str):
        r = http_request(url, "HEAD", "/org/model/resolve/feature%2Fx/config.json")
        with lock:
            statuses.append(r.status)

    threads = [threading.Thread(target=head, args=(url,)) for url in cluster.nodes.values() for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 16
    seen: dict[tuple[str, str], int] = {}
    for record in fake_hub.requests():
        key = (record["path"], record["query"])
        seen[key] = seen.get(key, 0) + 1
    assert seen, "nobody asked upstream"
    assert all(count == 1 for count in seen.values()), f"the cluster asked upstream more than once: {seen}"


def test_a_corrupted_blob_on_one_node_is_refilled_from_a_replica(cluster, fake_hub):
    meta = fake_hub.files()["model.safetensors"]
    data = fake_hub.file("org/model", "model.safetensors")
    ranking = preference_list(meta["sha256"])
    victim = ranking[-1]
    # The blob lands on the leader (from upstream) and on the victim (from the leader).
    r = http_request(cluster.nodes[victim], "GET", LFS)
    assert r.status == 200 and r.body == data
    wait_until(lambda: cluster.has_blob(victim, meta["sha256"]) and cluster.has_blob(ranking[0], meta["sha256"]), "both copies")
    blob = cluster.data_dir / victim / "blobs" / meta["sha256"][:2] / meta["sha256"]
    with open(blob, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    fake_hub.reset()
    try:
        r = http_request(cluster.nodes[victim], "GET", LFS)
        served_whole = r.status == 200 and len(r.body) == meta["size"]
        assert not served_whole or r.body == data, "corrupt bytes were served"
    except Exception:  # the connection was aborted: the corrupt chunk never went out
        pass
    r = http_request(cluster.nodes[victim], "GET", LFS)
    assert r.status == 200 and r.body == data
    assert not cdn_gets(fake_hub, meta["sha256"]), "refilled from a replica, not from upstream"


def test_snapshot_download_through_each_node_in_turn(cluster, fake_hub, client):
    """Scenario 7: the real client (huggingface_hub 2.x) pointed at every node in turn gets the whole
    repository, byte for byte, and the cluster fetched each LFS blob from upstream once."""
    from conftest import SNAPSHOT, files_under

    sha = fake_hub.sha()
    expected = {p: fake_hub.file("org/model", p, rev=sha) for p in fake_hub.files(ref=sha)}
    fake_hub.reset()
    for name, url in sorted(cluster.nodes.items()):
        res = client.run(SNAPSHOT, client.env(url), {"revision": None})
        root = Path(res.result)
        assert root.name == sha, name
        assert files_under(root) == expected, name
    for path, meta in fake_hub.files().items():
        if meta["lfs"]:
            assert len(cdn_gets(fake_hub, meta["sha256"])) == 1, path
