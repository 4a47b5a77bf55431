"""The node's store and read-through guarantees, seen from outside: crash safety under kill -9,
verification of upstream bytes, a full disk that stops caching but not serving, streaming before a
fill completes, coalesced metadata, and tokens that never reach a log."""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from pathlib import Path

from conftest import OTHER_TOKEN, VALID_TOKEN, Mirror, wait_until

LFS = "/org/model/resolve/main/model.safetensors"


def blob_files(mirror) -> dict[str, int]:
    """Every complete blob on the mirror's disk: name -> size."""
    root = mirror.data_dir / "blobs"
    return {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def temp_files(mirror) -> list[Path]:
    root = mirror.data_dir / "tmp"
    return [p for p in root.iterdir()] if root.exists() else []


def open_stream(base_url: str, path: str, headers: dict | None = None):
    """Starts a GET and returns (connection, response) with only the headers read."""
    parsed = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    conn.request("GET", path, headers=headers or {})
    return conn, conn.getresponse()




def read_until_cut(base_url: str, path: str) -> bytes:
    """GETs `path` and returns every body byte received until the body ended or the connection was
    cut; a cut is how the mirror refuses to finish a response it cannot vouch for."""
    conn, resp = open_stream(base_url, path)
    assert resp.status == 200
    received = b""
    try:
        while True:
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            received += chunk
    except (http.client.IncompleteRead, ConnectionError) as error:
        received += getattr(error, "partial", b"")
    finally:
        conn.close()
    return received


def test_kill_9_mid_fill_leaves_no_complete_looking_blob(fake_hub, mirror):
    meta = fake_hub.files()["model.safetensors"]
    fake_hub.throttle(256 * 1024)  # ~12 s for the whole file: the kill lands mid-transfer
    try:
        conn, resp = open_stream(mirror.url, LFS)
        assert resp.status == 200
        assert len(resp.read(100_000)) == 100_000
        wait_until(lambda: temp_files(mirror), "a fill in progress")
        mirror.kill()
        conn.close()
        assert meta["sha256"] not in blob_files(mirror), "a half-written blob must never look complete"
    finally:
        fake_hub.throttle(0)
    mirror.start()
    assert temp_files(mirror) == [], "start-up removes fill leftovers"
    r = mirror.request("GET", LFS)
    assert r.status == 200 and r.body == fake_hub.file("org/model", "model.safetensors")
    wait_until(lambda: blob_files(mirror).get(meta["sha256"]) == meta["size"], "the blob to be stored")


def test_corrupt_upstream_bytes_are_neither_stored_nor_served_as_complete(fake_hub, mirror):
    meta = fake_hub.files()["model.safetensors"]
    fake_hub.corrupt(True)
    try:
        received = read_until_cut(mirror.url, LFS)
        # The response must not end cleanly with the full (corrupt) length.
        assert len(received) < meta["size"], "a corrupt blob was served as complete"
        time.sleep(0.5)
        assert meta["sha256"] not in blob_files(mirror)
    finally:
        fake_hub.corrupt(False)
    r = mirror.request("GET", LFS)
    assert r.status == 200 and r.body == fake_hub.file("org/model", "model.safetensors")


def test_a_full_disk_stops_caching_not_serving(fake_hub, tmp_path):
    meta = fake_hub.files()["model.safetensors"]
    small = Mirror(fake_hub.url, tmp_path / "small", extra_args=["--max-disk", "1MB", "--min-free-disk", "0"])
    try:
        for _ in range(2):
            r = small.request("GET", LFS)
            assert r.status == 200 and r.body == fake_hub.file("org/model", "model.safetensors")
            assert r.header("X-Cache") == "MISS"
        r = small.request("GET", "/org/model/resolve/main/model.safetensors", headers={"Range": "bytes=100-199"})
        assert r.status == 206 and r.body == fake_hub.file("org/model", "model.safetensors")[100:200]
        assert meta["sha256"] not in blob_files(small), "a blob larger than --max-disk is not stored"
        r = small.request("GET", "/org/model/resolve/main/config.json")
        assert r.status == 200
        wait_until(lambda: fake_hub.files()["config.json"]["etag"] in blob_files(small), "the small file to be stored")
    finally:
        small.stop()


def test_a_cold_download_streams_before_the_fill_completes(fake_hub, mirror):
    meta = fake_hub.files()["model.safetensors"]
    fake_hub.throttle(512 * 1024)
    try:
        conn, resp = open_stream(mirror.url, LFS)
        assert resp.status == 200
        assert int(resp.getheader("Content-Length")) == meta["size"]
        first = resp.read(64 * 1024)
        assert len(first) == 64 * 1024
        # Headers and the first bytes arrived while the blob is still being filled.
        assert meta["sha256"] not in blob_files(mirror)
        rest = resp.read()
        conn.close()
    finally:
        fake_hub.throttle(0)
    assert first + rest == fake_hub.file("org/model", "model.safetensors")


def test_concurrent_cold_metadata_requests_are_coalesced(fake_hub, mirror):
    fake_hub.reset()
    results: list[int] = []

    def head():
        results.append(mirror.request("HEAD", "/org/model/resolve/main/config.json").status)

    threads = [threading.Thread(target=head) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 8
    seen: dict[tuple[str, str], int] = {}
    for record in fake_hub.requests():
        if record["server"] == "hub":
            seen[(record["path"], record["query"])] = seen.get((record["path"], record["query"]), 0) + 1
    assert seen, "the mirror asked upstream nothing"
    assert all(count == 1 for count in seen.values()), f"upstream asked more than once: {seen}"
    # A HEAD is answered from the catalog: no byte of the file was fetched.
    assert not [r for r in fake_hub.requests() if "/resolve/" in r["path"] or r["server"] == "cdn"]


def test_tokens_never_reach_the_logs_or_upstream_for_public_repos(fake_hub, mirror):
    fake_hub.reset()
    for token in (VALID_TOKEN, OTHER_TOKEN):
        auth = {"Authorization": f"Bearer {token}"}
        assert mirror.request("GET", "/org/model/resolve/main/config.json", headers=auth).status == 200
        mirror.request("GET", "/org/private/resolve/main/config.json", headers=auth)
        mirror.request("HEAD", "/org/gated/resolve/main/config.json", headers=auth)
        mirror.request("GET", "/api/whoami-v2", headers=auth)
    public = [r for r in fake_hub.requests() if "org/model" in r["path"]]
    assert public and not any(r["auth"] for r in public), "a caller's token went upstream for a public repo"
    assert any(r["auth"] for r in fake_hub.requests() if "org/private" in r["path"])
    mirror.stop()
    logs = mirror.logs()
    assert "answered" in logs, "the mirror logged no requests at all"
    for token in (VALID_TOKEN, OTHER_TOKEN):
        assert token not in logs


def test_a_corrupted_stored_blob_is_detected_not_served_and_filled_again(fake_hub, mirror):
    meta = fake_hub.files()["model.safetensors"]
    data = fake_hub.file("org/model", "model.safetensors")
    r = mirror.request("GET", LFS)
    assert r.status == 200 and r.body == data
    blob = wait_until(lambda: next((p for p in (mirror.data_dir / "blobs").rglob(meta["sha256"]) if p.is_file()), None), "the blob on disk")
    # Flip one byte in the middle of the stored file, as a bad sector would.
    with open(blob, "r+b") as handle:
        handle.seek(meta["size"] // 2)
        byte = handle.read(1)
        handle.seek(meta["size"] // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    fake_hub.reset()
    received = read_until_cut(mirror.url, LFS)
    assert len(received) < meta["size"], "the corrupt blob must not be served as a whole file"
    assert data.startswith(received), "every byte that went out is a good byte: the bad chunk was never sent"
    # The next request fills the blob again from a good source and serves the right bytes.
    r = mirror.request("GET", LFS)
    assert r.status == 200 and r.body == data
    assert any(meta["sha256"] in entry["path"] for entry in fake_hub.requests() if entry["server"] == "cdn"), "refilled from upstream"


def test_a_blob_sent_without_reading_after_its_check_is_checked_again_once_its_file_changes(fake_hub, mirror):
    """A blob whose every chunk was checked is then sent from its file as it is (sendfile), until the
    file changes: a write to it, however small, makes the next read check every chunk again."""
    meta = fake_hub.files()["model.safetensors"]
    data = fake_hub.file("org/model", "model.safetensors")
    r = mirror.request("GET", LFS)
    assert r.status == 200 and r.body == data
    blob = wait_until(lambda: next((p for p in (mirror.data_dir / "blobs").rglob(meta["sha256"]) if p.is_file()), None), "the blob on disk")
    # A file changed within the last second is not trusted (file times tick coarsely): wait, then a
    # whole read checks it and the next ones go out unread.
    time.sleep(1.2)
    for _ in range(3):
        r = mirror.request("GET", LFS)
        assert r.status == 200 and r.body == data
    r = mirror.request("GET", LFS, headers={"Range": "bytes=100-2000"})
    assert r.status == 206 and r.body == data[100:2001]
    with open(blob, "r+b") as handle:
        handle.seek(meta["size"] - 10)
        byte = handle.read(1)
        handle.seek(meta["size"] - 10)
        handle.write(bytes([byte[0] ^ 0x01]))
    fake_hub.reset()
    received = read_until_cut(mirror.url, LFS)
    assert len(received) < meta["size"], "a blob changed on disk must not be served whole without a check"
    assert data.startswith(received)
    r = mirror.request("GET", LFS)
    assert r.status == 200 and r.body == data
