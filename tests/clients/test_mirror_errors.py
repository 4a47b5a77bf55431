"""The §7 error contract through the mirror (raw headers and client exception classes), private and
gated repos with and without tokens (never served from cache to an unchecked caller), unknown routes
and hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import (DOWNLOAD_MANY, DOWNLOAD_ONE, OTHER_TOKEN, VALID_TOKEN, is_remote_entry_not_found, key,
                      raw_exchange)


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def assert_hub_error(r, status: int, code: str) -> None:
    assert r.status == status, r
    assert r.header("X-Error-Code") == code, r.header_list
    assert r.header("X-Error-Message"), r.header_list


def assert_json_error(r) -> None:
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


def test_raw_error_headers(fake_hub, mirror):
    sha = fake_hub.sha()
    cases = [
        # (method, path, token, status, code)
        ("HEAD", "/org/nope/resolve/main/config.json", None, 401, "RepoNotFound"),
        ("GET", "/org/nope/resolve/main/config.json", VALID_TOKEN, 404, "RepoNotFound"),
        ("GET", "/api/models/org/nope", None, 401, "RepoNotFound"),
        ("GET", "/api/models/org/nope/revision/main", OTHER_TOKEN, 404, "RepoNotFound"),
        ("GET", "/api/models/org/nope/tree/main", None, 401, "RepoNotFound"),
        ("HEAD", "/org/model/resolve/nope/config.json", None, 404, "RevisionNotFound"),
        ("GET", "/org/model/resolve/nope/config.json", None, 404, "RevisionNotFound"),
        ("GET", "/api/models/org/model/revision/nope", None, 404, "RevisionNotFound"),
        ("GET", "/api/models/org/model/tree/nope", None, 404, "RevisionNotFound"),
        ("GET", "/org/model/resolve/main/nope.json", None, 404, "EntryNotFound"),
        ("GET", "/api/models/org/model/tree/main/nope", None, 404, "EntryNotFound"),
        ("GET", "/api/models/org/model/tree/main/additional_chat_templates?recursive=false", None, 404, "EntryNotFound"),
        ("HEAD", "/org/private/resolve/main/config.json", None, 401, "RepoNotFound"),
        ("GET", "/org/private/resolve/main/config.json", OTHER_TOKEN, 404, "RepoNotFound"),
        ("GET", "/api/models/org/private", None, 401, "RepoNotFound"),
        ("GET", "/api/models/org/private", OTHER_TOKEN, 404, "RepoNotFound"),
        ("HEAD", "/org/gated/resolve/main/model.safetensors", None, 401, "GatedRepo"),
        ("GET", "/org/gated/resolve/main/config.json", OTHER_TOKEN, 403, "GatedRepo"),
    ]
    for method, path, token, status, code in cases:
        r = mirror.request(method, path, headers=bearer(token))
        assert_hub_error(r, status, code)
        if method == "GET":
            assert_json_error(r)
    # a missing file carries X-Repo-Commit, so clients can cache the absence
    for method in ("HEAD", "GET"):
        r = mirror.request(method, "/org/model/resolve/main/nope.json")
        assert r.header("X-Repo-Commit") == sha
        r = mirror.request(method, f"/org/model/resolve/{sha}/sub/nope.txt")
        assert_hub_error(r, 404, "EntryNotFound")
        assert r.header("X-Repo-Commit") == sha


def test_client_exception_classes(fake_hub, mirror, client, via_mirror):
    def run(repo, path, token=None, revision=None):
        return client.run(DOWNLOAD_ONE, via_mirror(token), {"repo": repo, "path": path, "revision": revision})

    r = run("org/nope", "config.json")
    assert r.raised("RepositoryNotFoundError") and r.status == 401, r
    r = run("org/nope", "config.json", token=VALID_TOKEN)
    assert r.raised("RepositoryNotFoundError") and r.status == 404, r
    r = run("org/model", "config.json", revision="nope")
    assert r.raised("RevisionNotFoundError"), r
    r = run("org/gated", "model.safetensors")
    assert r.raised("GatedRepoError") and r.status == 401, r
    r = run("org/gated", "model.safetensors", token=OTHER_TOKEN)
    assert r.raised("GatedRepoError") and r.status == 403, r
    r = run("org/private", "config.json")
    assert r.raised("RepositoryNotFoundError") and not r.raised("GatedRepoError"), r

    home = client.new_home()
    r = client.run(DOWNLOAD_ONE, via_mirror(home=home), {"repo": "org/model", "path": "nope.json"})
    assert is_remote_entry_not_found(r), r
    # the absence is cached under the commit the mirror announced
    assert (home / "hub" / "models--org--model" / ".no_exist" / fake_hub.sha() / "nope.json").exists()

    res = client.run("""
from huggingface_hub import HfApi
api = HfApi()
out = {}
for name, call in [("tree", lambda: list(api.list_repo_tree("org/model", path_in_repo="nope"))),
                   ("info_rev", lambda: api.model_info("org/model", revision="nope")),
                   ("info_repo", lambda: api.model_info("org/nope"))]:
    try:
        call()
        out[name] = None
    except Exception as e:
        out[name] = [c.__name__ for c in type(e).__mro__]
result = out
""", via_mirror())
    out = res.result
    assert "EntryNotFoundError" in out["tree"] and "RepositoryNotFoundError" not in out["tree"]
    assert "RevisionNotFoundError" in out["info_rev"]
    assert "RepositoryNotFoundError" in out["info_repo"]


@pytest.mark.parametrize("repo,path,anon_status,anon_code,other_status,other_code", [
    ("org/private", "secret.bin", 401, "RepoNotFound", 404, "RepoNotFound"),
    ("org/private", "config.json", 401, "RepoNotFound", 404, "RepoNotFound"),
    ("org/gated", "model.safetensors", 401, "GatedRepo", 403, "GatedRepo"),
    ("org/gated", "config.json", 401, "GatedRepo", 403, "GatedRepo"),
])
def test_private_and_gated_never_served_without_upstream_check(fake_hub, mirror, client, via_mirror, repo, path,
                                                                anon_status, anon_code, other_status, other_code):
    fake_hub.reset()
    data = fake_hub.file(repo, path)
    # with the right token: the file, and the public repo alongside it
    res = client.run(DOWNLOAD_MANY, via_mirror(VALID_TOKEN), {"files": [{"repo": repo, "path": path},
                                                                        {"path": "config.json"}]})
    assert Path(res.result[key(path, repo=repo)]).read_bytes() == data
    r = mirror.request("GET", f"/{repo}/resolve/main/{path}", headers=bearer(VALID_TOKEN))
    assert r.status == 200 and r.body == data
    log = fake_hub.requests()
    # the token went upstream for this repo's files, never for the public repo, never to the CDN
    assert any(e["auth"] for e in log if e["server"] == "hub" and f"/{repo}/" in e["path"] + "/"), log
    assert not any(e["auth"] for e in log if "org/model" in e["path"]), log
    assert not any(e["auth"] for e in log if e["server"] == "cdn"), log

    # afterwards, callers without access are still refused (nothing served from the mirror's cache)
    for _ in range(2):
        r = mirror.request("GET", f"/{repo}/resolve/main/{path}")
        assert_hub_error(r, anon_status, anon_code)
        assert r.body != data
        r = mirror.request("HEAD", f"/{repo}/resolve/main/{path}")
        assert_hub_error(r, anon_status, anon_code)
        r = mirror.request("GET", f"/{repo}/resolve/main/{path}", headers=bearer(OTHER_TOKEN))
        assert_hub_error(r, other_status, other_code)
        assert r.body != data
        sha = fake_hub.sha(repo)
        r = mirror.request("GET", f"/{repo}/resolve/{sha}/{path}")
        assert_hub_error(r, anon_status, anon_code)
    anon = client.run(DOWNLOAD_ONE, via_mirror(), {"repo": repo, "path": path})
    assert anon.raised("RepositoryNotFoundError") and anon.status == anon_status, anon
    if anon_code == "GatedRepo":
        assert anon.raised("GatedRepoError")
    other = client.run(DOWNLOAD_ONE, via_mirror(OTHER_TOKEN), {"repo": repo, "path": path})
    assert other.raised("RepositoryNotFoundError") and other.status == other_status, other


def test_agent_harnesses_fast_404(mirror):
    r = mirror.request("GET", "/api/agent-harnesses")
    assert r.status == 404 and r.header("X-Error-Code"), r
    assert_json_error(r)


def test_unknown_routes(mirror):
    for path in ("/no/such/route/at/all", "/api/nope", "/org/model/blob/main/config.json", "/api/models/org/model/nope"):
        r = mirror.request("GET", path)
        assert 400 <= r.status < 500, (path, r)
        assert r.header("X-Error-Code"), (path, r.header_list)
        assert_json_error(r)
    r = mirror.request("GET", "/no/such/route/at/all")
    assert_hub_error(r, 404, "NotFound")


HOSTILE = [
    ("dotdot", b"GET /org/model/resolve/main/../../../../etc/passwd HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    ("dotdot-encoded", b"GET /org/model/resolve/main/sub/%2e%2e/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    ("dotdot-slash-encoded", b"GET /org/model/resolve/main/..%2F..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    ("dotdot-repo", b"GET /../model/resolve/main/config.json HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    ("dotdot-tree", b"GET /api/models/org/model/tree/main/..%2F..%2F.. HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    ("nul", b"GET /org/model/resolve/main/config%00.json HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    ("nul-rev", b"GET /org/model/resolve/ma%00in/config.json HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    ("bad-percent", b"GET /org/model/resolve/main/%zz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    ("bad-percent-rev", b"GET /org/model/resolve/%zz/config.json HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    ("absurd-range", b"GET /org/model/resolve/main/config.json HTTP/1.1\r\nHost: m\r\nConnection: close\r\nRange: bytes=99999999999999999999-\r\n\r\n"),
    ("reversed-range", b"GET /org/model/resolve/main/config.json HTTP/1.1\r\nHost: m\r\nConnection: close\r\nRange: bytes=5-2\r\n\r\n"),
    ("huge-header", b"GET /org/model/resolve/main/config.json HTTP/1.1\r\nHost: m\r\nConnection: close\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"),
    ("unknown-route", b"GET /this/is/not/a/route HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
]


@pytest.mark.parametrize("name,request_bytes", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_requests(fake_hub, mirror, name, request_bytes):
    r = raw_exchange(mirror.url, request_bytes)
    assert r is not None, f"{name}: connection closed without an answer"
    assert 400 <= r.status < 500, (name, r)
    assert r.header("X-Error-Code"), (name, r.header_list)
    assert_json_error(r)
    assert b"root:" not in r.body
    assert mirror.alive()
