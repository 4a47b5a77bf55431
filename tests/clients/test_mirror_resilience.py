"""Upstream down, a moving branch, and concurrent cold downloads collapsing into one upstream fetch."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import DOWNLOAD_MANY, SNAPSHOT, files_under, key, parse_range_header

REF_TTL_SECONDS = 1.0  # the mirror fixture runs with --ref-ttl 1s


def test_upstream_down_serves_cached(fake_hub, mirror, client, via_mirror):
    files = fake_hub.files()
    names = ["config.json", "model.safetensors", "sub/dir/file.txt"]
    snap = client.run(SNAPSHOT, via_mirror(), {})
    assert Path(snap.result).name == fake_hub.sha()
    fake_hub.down(True)
    time.sleep(REF_TTL_SECONDS * 2.5)  # the cached ref is stale now: the mirror must try upstream and fall back
    try:
        # a fresh client cache, same revision by branch: everything must come from the mirror
        res = client.run(DOWNLOAD_MANY, via_mirror(), {"files": [{"path": p} for p in names]})
        for p in names:
            assert Path(res.result[key(p)]).read_bytes() == fake_hub.file("org/model", p)
        snap = client.run(SNAPSHOT, via_mirror(), {})
        assert files_under(Path(snap.result)) == {p: fake_hub.file("org/model", p) for p in files}
        r = mirror.request("HEAD", "/org/model/resolve/main/model.safetensors")
        assert r.status == 200 and r.header("X-Repo-Commit") == fake_hub.sha()
        r = mirror.request("GET", "/api/models/org/model/revision/main")
        assert r.status == 200 and r.json()["sha"] == fake_hub.sha()
        # the fake really was down for the mirror
        assert any(e["server"] == "hub" for e in fake_hub.requests())
    finally:
        fake_hub.down(False)


def test_branch_move_is_seen_after_ttl(fake_hub, mirror, client, via_mirror):
    old = fake_hub.sha()
    first = client.run(DOWNLOAD_MANY, via_mirror(), {"files": [{"path": "config.json"}]})
    assert json.loads(Path(first.result[key("config.json")]).read_text())["fake_revision"] == "main-1"
    new = fake_hub.move_branch("org/model", "main")
    assert new != old
    time.sleep(REF_TTL_SECONDS * 2.5)  # past the ref TTL; not a timing assertion
    res = client.run(DOWNLOAD_MANY, via_mirror(), {"files": [{"path": "config.json"}, {"path": "new_file.txt"}]})
    local = Path(res.result[key("config.json")])
    assert f"/snapshots/{new}/" in local.as_posix()
    assert local.read_bytes() == fake_hub.file("org/model", "config.json", rev=new)
    assert json.loads(local.read_text())["fake_revision"] == "main-2"
    assert Path(res.result[key("new_file.txt")]).read_bytes() == fake_hub.file("org/model", "new_file.txt", rev=new)
    r = mirror.request("HEAD", "/org/model/resolve/main/config.json")
    assert r.header("X-Repo-Commit") == new
    assert mirror.request("GET", "/api/models/org/model/revision/main").json()["sha"] == new
    # the old commit stays addressable by sha
    r = mirror.request("GET", f"/org/model/resolve/{old}/config.json")
    assert r.status == 200 and r.body == fake_hub.file("org/model", "config.json", rev=old)
    snap = client.run(SNAPSHOT, via_mirror(), {})
    assert Path(snap.result).name == new
    assert files_under(Path(snap.result)) == {p: fake_hub.file("org/model", p, rev=new) for p in fake_hub.files(ref=new)}


CONCURRENT = """
import threading
from huggingface_hub import hf_hub_download
n = ARGS["n"]
barrier = threading.Barrier(n)
paths, errors = [None] * n, [None] * n
def worker(i):
    barrier.wait()
    try:
        paths[i] = hf_hub_download("org/model", ARGS["path"], cache_dir=ARGS["base"] + f"/cache{i}")
    except Exception as e:
        errors[i] = repr(e)
threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
result = {"paths": paths, "errors": errors}
"""


def test_concurrent_cold_downloads_fetch_upstream_once(fake_hub, mirror, client, via_mirror, tmp_path):
    meta = fake_hub.files()["model.safetensors"]
    size = meta["size"]
    fake_hub.throttle(max(64 * 1024, size // 3))  # ~3 s per full transfer, so the 8 downloads overlap
    fake_hub.reset()
    try:
        res = client.run(CONCURRENT, via_mirror(), {"n": 8, "path": "model.safetensors", "base": str(tmp_path / "c")})
    finally:
        fake_hub.throttle(0)
    out = res.result
    assert out["errors"] == [None] * 8, out["errors"]
    data = fake_hub.file("org/model", "model.safetensors")
    for p in out["paths"]:
        assert Path(p).read_bytes() == data
    gets = [r for r in fake_hub.requests() if r["server"] == "cdn" and r["method"] == "GET" and meta["sha256"] in r["path"]]
    assert gets, "the blob was never fetched from the CDN"
    # every byte of the blob was fetched from upstream exactly once (one GET, or disjoint Range pieces)
    spans = sorted(parse_range_header(r.get("range"), size) for r in gets)
    covered = 0
    for start, end in spans:
        assert start == covered, f"overlapping or missing upstream ranges: {spans}"
        covered = end
    assert covered == size, spans
    if all(not r.get("range") for r in gets):
        assert len(gets) == 1, gets
