"""Protocol details clients rely on (issue 15): conditional requests on /resolve/ (hub-api.md T24),
the IETF RateLimit fields on 429s, the mirror's own and upstream's (T26), and no Xet signal on any
route (T25)."""

import re

import pytest

from conftest import git_blob_sha1, norm_etag, sha256_hex, topology_mirror

FILES = [("config.json", "regular"), ("model.safetensors", "lfs")]


def expected_etag(fake_hub, path: str) -> str:
    data = fake_hub.file("org/model", path)
    info = fake_hub.files("org/model")[path]
    return sha256_hex(data) if info.get("lfs") else git_blob_sha1(data)


@pytest.mark.parametrize("path,kind", FILES)
def test_a_matching_if_none_match_is_304_on_head_and_get(mirror, fake_hub, path, kind):
    etag = expected_etag(fake_hub, path)
    first = mirror.request("GET", f"/org/model/resolve/main/{path}")
    assert first.status == 200 and norm_etag(first.header("ETag")) == etag, first
    for method in ("HEAD", "GET"):
        for validator in (f'"{etag}"', f'W/"{etag}"', f'"0000", "{etag}"', "*"):
            answer = mirror.request(method, f"/org/model/resolve/main/{path}", headers={"If-None-Match": validator})
            assert answer.status == 304, (method, validator, answer)
            assert answer.body == b""
            assert norm_etag(answer.header("ETag")) == etag
            assert answer.header("X-Repo-Commit") == fake_hub.sha()
            assert answer.header("X-Cache") in ("HIT", "REVALIDATED"), answer
            assert answer.header("Content-Range") is None
            assert answer.header("Content-Length") in (None, str(len(fake_hub.file("org/model", path)))), answer


@pytest.mark.parametrize("path,kind", FILES)
def test_another_etag_gets_the_whole_answer(mirror, fake_hub, path, kind):
    data = fake_hub.file("org/model", path)
    answer = mirror.request("GET", f"/org/model/resolve/main/{path}", headers={"If-None-Match": '"not-this-one"'})
    assert answer.status == 200 and answer.body == data
    head = mirror.request("HEAD", f"/org/model/resolve/main/{path}", headers={"If-None-Match": '"not-this-one"'})
    assert head.status == 200 and int(head.header("Content-Length")) == len(data)


@pytest.mark.parametrize("path,kind", FILES)
def test_if_range_with_a_stale_validator_gets_the_whole_file(mirror, fake_hub, path, kind):
    data = fake_hub.file("org/model", path)
    etag = expected_etag(fake_hub, path)
    fresh = mirror.request("GET", f"/org/model/resolve/main/{path}", headers={"Range": "bytes=1-4", "If-Range": f'"{etag}"'})
    assert fresh.status == 206 and fresh.body == data[1:5], fresh
    for stale in ('"an-older-etag"', f'W/"{etag}"', "Tue, 02 Jan 2024 03:04:05 GMT"):
        answer = mirror.request("GET", f"/org/model/resolve/main/{path}", headers={"Range": "bytes=1-4", "If-Range": stale})
        assert answer.status == 200, (stale, answer)
        assert answer.body == data and answer.header("Content-Range") is None


def parse_fields(answer):
    """The RateLimit fields as huggingface_hub reads them (its own parser where it has one)."""
    limit = answer.header("RateLimit")
    policy = answer.header("RateLimit-Policy")
    assert limit and policy, answer
    m = re.fullmatch(r'"(\w+)";r=(\d+);t=(\d+)', limit)
    p = re.fullmatch(r'"fixed window";"(\w+)";q=(\d+);w=(\d+)', policy)
    assert m and p and m.group(1) == p.group(1), (limit, policy)
    try:
        from huggingface_hub.utils import parse_ratelimit_headers
    except ImportError:  # 0.36 has no parser; the regexes above are the format 1.x and 2.x read
        parse_ratelimit_headers = None
    if parse_ratelimit_headers is not None:
        info = parse_ratelimit_headers(dict(answer.headers))
        assert info is not None and info.resource_type == m.group(1)
        assert info.remaining == 0 and info.reset_in_seconds == int(m.group(3))
    return m.group(1), int(m.group(3)), int(p.group(2)), int(p.group(3))


def test_the_mirrors_own_429_carries_ratelimit_fields(fake_hub, tmp_path):
    mirror = topology_mirror(fake_hub.url, tmp_path,
                             '[[limits.allow]]\nprefix = "127.0.0.0/8"\nrequests_per_second = 1\nburst = 3\ndaily_bytes = "0"')
    try:
        answers = [mirror.request("GET", "/api/models/org/model") for _ in range(6)]
        refused = [a for a in answers if a.status == 429]
        assert refused, [a.status for a in answers]
        name, reset, quota, window = parse_fields(refused[0])
        assert name == "requests" and quota == 3 and window == 3
        assert reset == int(refused[0].header("Retry-After"))
    finally:
        mirror.stop()


def test_upstreams_429_fields_are_relayed_unchanged(mirror, fake_hub):
    fake_hub.control("POST", "/_fake/rate-limit?on=1")
    try:
        # A pass-through route and a cold metadata answer (nothing cached to stand in).
        for path in ("/api/models?search=org", "/api/models/org/model/revision/main"):
            answer = mirror.request("GET", path)
            assert answer.status == 429, (path, answer)
            assert answer.header("RateLimit") == '"resolvers";r=0;t=87', (path, answer)
            assert answer.header("RateLimit-Policy") == '"fixed window";"resolvers";q=3000;w=300'
            assert answer.header("Retry-After") == "87"
            parse_fields(answer)
    finally:
        fake_hub.control("POST", "/_fake/rate-limit?on=0")


def test_no_route_carries_a_xet_signal(mirror, fake_hub):
    paths = [
        ("HEAD", "/org/model/resolve/main/model.safetensors"),
        ("GET", "/org/model/resolve/main/model.safetensors"),
        ("HEAD", "/org/model/resolve/main/config.json"),
        ("GET", "/api/models/org/model"),
        ("GET", "/api/models/org/model/tree/main"),
        ("GET", "/api/models/org/model/revision/main"),
        ("GET", "/api/models?search=org"),
    ]
    for method, path in paths:
        answer = mirror.request(method, path)
        assert answer.status in (200, 206), (path, answer)
        for name, value in answer.headers.items():
            assert not name.lower().startswith("x-xet-"), (path, name)
            if name.lower() == "link":
                assert "xet" not in value, (path, value)
