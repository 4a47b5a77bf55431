"""The official Rust client, the `hf-hub` crate (1.x), through the mirror.

tests/hf-hub-client is a tiny binary on hf-hub's own API (`HFClient` + `download_file` into the HF
cache); scripts/test-all.sh builds it (its own workspace and target dir, outside the product's
aws-lc guard) and passes its path in HF_HUB_CLIENT_BIN. These tests only run it.

What they pin down:
- hf-hub takes the Xet path on an `X-Xet-Hash` header alone (the fake Hub sends one, with a dead CAS,
  and hf-hub fails there); through the mirror, which strips every Xet signal, both a regular and an
  LFS file download, byte for byte.
- The second download of a cached file is one HEAD with `If-None-Match: "<cached etag>"`, which the
  mirror answers `304 Not Modified` (ETag, X-Repo-Commit, X-Cache, no body); hf-hub then sends no GET.
- After the branch moves, a changed file gets the full answer and the new bytes.

A recording reverse proxy sits between hf-hub and the mirror, so the tests see exactly what hf-hub
sent and what it got back. They do not use huggingface_hub, so run.sh runs them in one venv only.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, clean_env, git_blob_sha1, norm_etag, sha256_hex, wait_until

pytestmark = pytest.mark.skipif(os.environ.get("HF_MIRROR_RUN_ONCE", "1") != "1",
                                reason="runs in one venv only (run.sh's ONCE_VENV): it does not use huggingface_hub")

REGULAR = "config.json"
LFS = "model.safetensors"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def hf_hub_client_bin() -> Path:
    path = Path(os.environ.get("HF_HUB_CLIENT_BIN", "target/hf-hub-client/debug/hf-hub-client"))
    path = path if path.is_absolute() else ROOT / path
    if not path.exists():
        pytest.fail(f"the hf-hub client binary {path} does not exist: scripts/test-all.sh builds it "
                    f"(CARGO_TARGET_DIR=target/hf-hub-client cargo build --locked "
                    f"--manifest-path tests/hf-hub-client/Cargo.toml) and sets HF_HUB_CLIENT_BIN", pytrace=False)
    return path


# ---------------------------------------------------------------------------------------------
# a recording reverse proxy


class RecordingProxy:
    """Forwards every request to `upstream` unchanged (Host included, so the mirror's own links point
    back here) and records method, path, request headers, status, response headers and body size."""

    def __init__(self, upstream: str):
        target = urllib.parse.urlsplit(upstream)
        self.records: list[dict] = []
        lock = threading.Lock()
        records = self.records

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002
                pass

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() not in HOP_BY_HOP:
                            conn.putheader(k, v)
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                    headers = [(k, v) for k, v in resp.getheaders()]
                finally:
                    conn.close()
                with lock:
                    records.append({
                        "method": self.command, "path": self.path,
                        "request": {k.lower(): v for k, v in self.headers.items()},
                        "status": resp.status, "headers": {k.lower(): v for k, v in headers}, "body": len(data),
                    })
                self.send_response_only(resp.status, resp.reason)
                for k, v in headers:
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                if self.command == "HEAD":
                    if resp.getheader("Content-Length") is not None:
                        self.send_header("Content-Length", resp.getheader("Content-Length"))
                elif resp.status not in (204, 304):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD" and resp.status not in (204, 304):
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self) -> list[dict]:
        """The records so far, clearing them."""
        out = list(self.records)
        self.records.clear()
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(mirror):
    p = RecordingProxy(mirror.url)
    try:
        yield p
    finally:
        p.stop()


def run_client(endpoint: str, cache_dir: Path, files: list[str], extra_env: dict | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    argv = [str(hf_hub_client_bin()), "--endpoint", endpoint, "--cache-dir", str(cache_dir), "--rounds", "1", *files]
    env = clean_env() | {"HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "HOME": str(cache_dir.parent)} | (extra_env or {})
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=str(cache_dir.parent))
    print(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    if check:
        assert proc.returncode == 0, f"hf-hub-client failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def downloads(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    return {d["file"]: d for d in map(json.loads, proc.stdout.splitlines())}


def resolve_records(records: list[dict], file: str) -> list[dict]:
    return [r for r in records if urllib.parse.unquote(r["path"].split("?")[0]).endswith(f"/resolve/main/{file}")]


def xet_signals(record: dict) -> list[str]:
    found = [k for k in record["headers"] if k.startswith("x-xet-")]
    if "xet" in (record["headers"].get("link") or "").lower():
        found.append("link: " + record["headers"]["link"])
    return found


def test_hf_hub_downloads_a_regular_and_an_lfs_file_twice_the_second_time_answered_304(mirror, fake_hub, proxy, tmp_path):
    sha = fake_hub.sha()
    want = {f: fake_hub.file("org/model", f) for f in (REGULAR, LFS)}
    etags = {REGULAR: git_blob_sha1(want[REGULAR]), LFS: sha256_hex(want[LFS])}
    cache = tmp_path / "hf-hub-cache"
    fake_hub.reset()

    # First download: a cold cache.
    first = downloads(run_client(proxy.url, cache, [REGULAR, LFS]))
    records = proxy.take()
    for f in (REGULAR, LFS):
        got = first[f]
        assert Path(got["path"]).read_bytes() == want[f], f
        assert got["sha256"] == sha256_hex(want[f]) and got["size"] == len(want[f]), got
        assert got["commit"] == sha and got["blob"] == etags[f], got
        seen = resolve_records(records, f)
        assert [r["method"] for r in seen] == ["HEAD", "GET"], seen
        assert all("if-none-match" not in r["request"] for r in seen), seen
        assert all(r["status"] == 200 for r in seen), seen
        assert norm_etag(seen[0]["headers"].get("etag")) == etags[f], seen[0]
    # Xet stays out: hf-hub would take the Xet path on X-Xet-Hash alone.
    assert all(not xet_signals(r) for r in records), [(r["path"], xet_signals(r)) for r in records if xet_signals(r)]
    lfs_cdn = [r for r in fake_hub.requests() if r["server"] == "cdn" and etags[LFS] in r["path"]]
    assert len(lfs_cdn) == 1, lfs_cdn
    fake_hub.reset()

    # Second download into the same cache: one conditional HEAD per file, answered 304, no GET.
    second = downloads(run_client(proxy.url, cache, [REGULAR, LFS]))
    records = proxy.take()
    for f in (REGULAR, LFS):
        got = second[f]
        assert got["path"] == first[f]["path"] and got["sha256"] == sha256_hex(want[f]), got
        assert Path(got["path"]).read_bytes() == want[f], f
        seen = resolve_records(records, f)
        assert [r["method"] for r in seen] == ["HEAD"], seen
        head = seen[0]
        assert head["request"].get("if-none-match") == f'"{etags[f]}"', head["request"]
        assert head["status"] == 304, head
        assert head["body"] == 0, head
        assert norm_etag(head["headers"].get("etag")) == etags[f], head["headers"]
        assert head["headers"].get("x-repo-commit") == sha, head["headers"]
        assert head["headers"].get("x-cache"), head["headers"]
        assert not xet_signals(head), head["headers"]
    assert [r for r in records if r["method"] != "HEAD"] == [], records
    assert not [r for r in fake_hub.requests() if r["server"] == "cdn"], "the second download moved bytes upstream"


def test_after_the_branch_moves_a_changed_file_gets_the_full_answer(mirror, fake_hub, proxy, tmp_path):
    cache = tmp_path / "hf-hub-cache"
    old = fake_hub.file("org/model", REGULAR)
    first = downloads(run_client(proxy.url, cache, [REGULAR, LFS]))
    assert Path(first[REGULAR]["path"]).read_bytes() == old
    new_sha = fake_hub.move_branch()
    new = fake_hub.file("org/model", REGULAR, rev=new_sha)
    assert new != old
    # The mirror's ref TTL is 1 s: wait until it serves the new commit (a bound, not a timing claim).
    wait_until(lambda: mirror.request("HEAD", f"/org/model/resolve/main/{REGULAR}").header("X-Repo-Commit") == new_sha,
               "the mirror to see the moved branch", timeout=60)
    proxy.take()

    second = downloads(run_client(proxy.url, cache, [REGULAR, LFS]))
    records = proxy.take()
    assert Path(second[REGULAR]["path"]).read_bytes() == new
    assert second[REGULAR]["blob"] == git_blob_sha1(new)
    head, *rest = resolve_records(records, REGULAR)
    assert head["method"] == "HEAD" and head["request"].get("if-none-match") == f'"{git_blob_sha1(old)}"', head
    assert head["status"] == 200 and norm_etag(head["headers"].get("etag")) == git_blob_sha1(new), head
    assert [r["method"] for r in rest] == ["GET"] and rest[0]["status"] == 200, rest
    # The unchanged LFS file: still the same bytes (the mirror may answer its HEAD 304 or 200).
    assert Path(second[LFS]["path"]).read_bytes() == fake_hub.file("org/model", LFS, rev=new_sha)
    assert all(not xet_signals(r) for r in records)


def test_without_the_mirror_hf_hub_takes_the_xet_path_on_x_xet_hash(fake_hub, tmp_path):
    """The control: straight at the (fake) Hub, whose LFS answers carry X-Xet-Hash and a dead CAS,
    hf-hub goes to Xet and fails; the mirror's stripping is what makes the downloads above work."""
    cache = tmp_path / "direct-cache"
    fast_fail = {"HF_XET_CLIENT_RETRY_MAX_ATTEMPTS": "1", "HF_XET_CLIENT_RETRY_MAX_DURATION": "1s",
                 "HF_XET_CLIENT_CONNECT_TIMEOUT": "2s"}
    proc = run_client(fake_hub.url, cache, [LFS], extra_env=fast_fail, check=False)
    assert proc.returncode != 0 and "xet" in proc.stderr.lower(), (proc.returncode, proc.stderr[-3000:])
