"""The public edge as an attacker on the Internet sees it: tokens never escape the read routes, the
mirror takes no writes, and what an anonymous client makes the node spend upstream is bounded by
what the client asks for (issue 16's findings, reproduced from outside)."""

import hashlib

import pytest

from conftest import FakeHub, Mirror, http_request, wait_until

TOKEN = {"Authorization": "Bearer hf_secret_token_for_tests"}
BIG_SIZE = 40 << 20


@pytest.fixture
def big_hub(tmp_path):
    hub = FakeHub(tmp_path / "bighub", big_size=BIG_SIZE)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def big_mirror(big_hub, tmp_path):
    mirror = Mirror(big_hub.url, tmp_path / "bigmirror")
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.mark.parametrize("path", [
    "/api/../whoami-v2",
    "/api/%2e%2e/whoami-v2",
    "/api/%2E%2E/whoami-v2",
    "/api/models/../../whoami-v2",
    "/api/./whoami-v2",
    "/org/model/resolve/main/%2e%2e/%2e%2e/api/whoami-v2",
])
def test_a_dot_segment_never_reaches_upstream_with_a_token(fake_hub, mirror, path):
    fake_hub.reset()
    r = mirror.request("GET", path, headers=TOKEN)
    assert r.status == 400 and r.header("X-Error-Code") == "BadRequest", r
    assert r.json()["error"]
    assert fake_hub.requests() == [], "nothing may reach upstream"


@pytest.mark.parametrize("method,path", [
    ("DELETE", "/api/repos/delete"),
    ("POST", "/api/repos/create"),
    ("PUT", "/api/models/org/model/settings"),
    ("POST", "/api/models/org/model/preupload/main"),
    ("POST", "/api/models/org/model/commit/main"),
    ("DELETE", "/api/models/org/model"),
    ("PATCH", "/api/models/org/model/discussions/1"),
])
def test_writes_are_answered_read_only_and_never_forwarded(fake_hub, mirror, method, path):
    fake_hub.reset()
    r = mirror.request(method, path, headers={**TOKEN, "Content-Type": "application/json"}, body=b"{}")
    assert r.status == 405 and r.header("X-Error-Code") == "ReadOnlyMirror", r
    assert "read-only" in r.json()["error"] and "huggingface.co" in r.json()["error"]
    assert fake_hub.requests() == [], "a write must not reach upstream"


def test_read_routes_still_pass_the_token_through(fake_hub, mirror):
    fake_hub.reset()
    r = mirror.request("GET", "/api/whoami-v2", headers=TOKEN)
    seen = [x for x in fake_hub.requests() if x["path"] == "/api/whoami-v2"]
    assert seen and seen[0]["auth"], "whoami is a read route: the caller's token goes with it"
    assert r.status in (200, 401)


def test_xet_token_routes_are_not_served(fake_hub, mirror):
    fake_hub.reset()
    r = mirror.request("GET", f"/api/models/org/model/xet-read-token/{fake_hub.sha()}", headers=TOKEN)
    assert r.status == 404 and r.header("X-Error-Code") == "NotFound"
    assert fake_hub.requests() == []


def test_one_byte_of_a_cold_huge_file_costs_upstream_about_one_byte(big_hub, big_mirror):
    path = "/bench/big/resolve/main/big.bin"
    big_hub.reset()
    r = big_mirror.request("GET", path, headers={"Range": "bytes=0-0"})
    assert r.status == 206 and len(r.body) == 1 and r.header("Content-Range") == f"bytes 0-0/{BIG_SIZE}"
    r = big_mirror.request("GET", path, headers={"Range": f"bytes={BIG_SIZE - 100}-"})
    assert r.status == 206 and len(r.body) == 100
    sent = big_hub.bytes_sent()
    assert sent < 1 << 20, f"two small ranges of a cold {BIG_SIZE}-byte file made upstream send {sent} bytes"
    # Nothing was stored for them.
    assert not any(p.is_file() and p.stat().st_size == BIG_SIZE for p in (big_mirror.data_dir / "blobs").rglob("*"))
    # The whole file is a fill: fetched once, stored, then served from disk.
    big_hub.reset()
    whole = big_mirror.request("GET", path)
    assert whole.status == 200 and len(whole.body) == BIG_SIZE
    digest = hashlib.sha256(whole.body).hexdigest()
    wait_until(lambda: (big_mirror.data_dir / "blobs" / digest[:2] / digest).is_file(), "the whole file to be stored")
    assert big_hub.bytes_sent() == BIG_SIZE
    big_hub.reset()
    again = big_mirror.request("GET", path, headers={"Range": "bytes=0-0"})
    assert again.status == 206 and again.body == whole.body[:1] and again.header("X-Cache") == "HIT"
    assert big_hub.bytes_sent() == 0


def test_a_flood_of_invented_repo_names_leaves_bounded_node_local_state(fake_hub, mirror):
    from test_metrics import parse
    names = [f"nobody/invented-{index}" for index in range(150)]
    for name in names:
        for path in (f"/api/models/{name}", f"/{name}/resolve/main/config.json"):
            r = mirror.request("GET", path)
            assert r.status in (401, 404) and r.header("X-Error-Code") == "RepoNotFound", (path, r.status)
    samples = parse(http_request(mirror.operator_url, "GET", "/metrics").body.decode())
    # One remembered answer per invented name, on this node only and bounded (10,000, expiring with
    # the policy TTL); no fetch is left behind by callers that are gone.
    assert samples["hfm_negative_policies_remembered"] == len(names)
    assert samples["hfm_metadata_fetches_in_progress"] == 0
    assert samples["hfm_store_blobs"] == 0
    # Asked again, the node answers the policy from memory: one upstream repo-info per name, not two.
    fake_hub.reset()
    assert mirror.request("GET", f"/{names[0]}/resolve/main/config.json").status in (401, 404)
    info = [r for r in fake_hub.requests() if r["path"].startswith(f"/api/models/{names[0]}")]
    assert len(info) == 0, info
