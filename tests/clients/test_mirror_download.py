"""Downloads through the mirror with real clients: bytes, revisions, cache identity, CLI, transformers,
legacy and renamed ids, Spaces, and the X-Cache / header stability the mirror promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import (DOWNLOAD_MANY, SNAPSHOT, cli_path, files_under, git_blob_sha1, hf_cli, key, legacy_cli,
                      norm_etag, requires_transformers, sha256_hex, upstream_blob_requests)

WEIRD = "we ird#name?+\u00e9.txt"
STABLE_HEADERS = ("X-Repo-Commit", "ETag", "X-Linked-Etag", "X-Linked-Size", "Content-Length", "Accept-Ranges",
                  "Content-Type")


def test_hf_hub_download_byte_exact(fake_hub, mirror, client, via_mirror):
    files = fake_hub.files()
    main_sha = fake_hub.sha()
    res = client.run(DOWNLOAD_MANY, via_mirror(), {"files": [{"path": p} for p in files]})
    for path, meta in files.items():
        local = Path(res.result[key(path)])
        data = local.read_bytes()
        assert data == fake_hub.file("org/model", path), path
        # cache identity comes from the mirror's headers: snapshots/<X-Repo-Commit>/…, blobs/<etag>
        assert f"/snapshots/{main_sha}/" in local.as_posix()
        assert local.resolve().name == meta["etag"] == (sha256_hex(data) if meta["lfs"] else git_blob_sha1(data))


@pytest.mark.parametrize("revision", [None, "feature/x", "refs/pr/1", "v1.0", "SHA"])
def test_snapshot_download_byte_exact(fake_hub, mirror, client, via_mirror, revision):
    if revision == "SHA":
        revision = fake_hub.sha()
    ref = revision or "main"
    sha = fake_hub.sha(ref=ref) if ref in fake_hub.repo_state("org/model")["refs"] else ref
    res = client.run(SNAPSHOT, via_mirror(), {"revision": revision})
    root = Path(res.result)
    assert root.name == sha
    assert files_under(root) == {p: fake_hub.file("org/model", p, rev=sha) for p in fake_hub.files(ref=sha)}


def test_revisions_hf_hub_download(fake_hub, mirror, client, via_mirror):
    model = fake_hub.repo_state("org/model")
    specs = [
        {"path": "feature.txt", "revision": "feature/x"},
        {"path": "config.json", "revision": "feature/x"},
        {"path": "extra.safetensors", "revision": "refs/pr/1"},
        {"path": "config.json", "revision": "v1.0"},
        {"path": "config.json", "revision": model["refs"]["main"]},
        {"path": "model.safetensors", "revision": model["refs"]["v1.0"]},
    ]
    res = client.run(DOWNLOAD_MANY, via_mirror(), {"files": specs})
    for spec in specs:
        rev = spec["revision"]
        sha = model["refs"].get(rev, rev)
        local = Path(res.result[key(spec["path"], revision=rev)])
        assert local.read_bytes() == fake_hub.file("org/model", spec["path"], rev=sha), spec
        assert f"/snapshots/{sha}/" in local.as_posix()


@pytest.mark.parametrize("rev_raw,ref", [("main", "main"), ("feature%2Fx", "feature/x"), ("refs%2Fpr%2F1", "refs/pr/1"),
                                         ("v1.0", "v1.0"), ("SHA", "main")])
def test_raw_resolve_headers(fake_hub, mirror, rev_raw, ref):
    sha = fake_hub.sha(ref=ref)
    if rev_raw == "SHA":
        rev_raw = sha
    files = fake_hub.files(ref=ref)
    for path, quoted in (("config.json", "config.json"), ("model.safetensors", "model.safetensors"),
                         ("sub/dir/file.txt", "sub/dir/file.txt")):
        if path not in files:
            continue
        meta = files[path]
        for method in ("HEAD", "GET"):
            r = mirror.request(method, f"/org/model/resolve/{rev_raw}/{quoted}")
            assert r.status == 200, r  # the mirror serves /resolve/ itself, never redirects
            assert r.header("X-Repo-Commit") == sha
            assert norm_etag(r.header("ETag")) == meta["etag"]
            assert norm_etag(r.header("X-Linked-Etag")) == meta["etag"]
            assert r.header("X-Linked-Size") == str(meta["size"])
            assert r.header("Content-Length") == str(meta["size"])
            assert r.header("Accept-Ranges") == "bytes"
            assert r.header("Content-Encoding") in (None, "identity")
            assert r.header("X-Cache") in ("HIT", "MISS", "REVALIDATED")
            assert r.header("Location") is None
            if method == "GET":
                assert r.body == fake_hub.file("org/model", path, rev=sha)


def test_odd_file_name_raw(fake_hub, mirror):
    r = mirror.request("GET", "/org/model/resolve/main/we%20ird%23name%3F%2B%C3%A9.txt")
    assert r.status == 200, r
    assert r.body == fake_hub.file("org/model", WEIRD)


def test_second_download_causes_no_upstream_blob_requests(fake_hub, mirror, client, via_mirror):
    sha = fake_hub.sha()
    files = ["config.json", "model.safetensors", "sub/dir/file.txt", WEIRD]
    first = client.run(SNAPSHOT, via_mirror(), {})
    assert Path(first.result).name == sha
    fake_hub.reset()
    # by commit sha: nothing about bytes or file metadata may go upstream
    by_sha = client.run(DOWNLOAD_MANY, via_mirror(), {"files": [{"path": p, "revision": sha} for p in files]})
    for p in files:
        assert Path(by_sha.result[key(p, revision=sha)]).read_bytes() == fake_hub.file("org/model", p)
    snap = client.run(SNAPSHOT, via_mirror(), {"revision": sha})
    assert files_under(Path(snap.result)) == {p: fake_hub.file("org/model", p) for p in fake_hub.files()}
    assert upstream_blob_requests(fake_hub.requests()) == []
    # by branch: the ref may be revalidated (TTL), but no bytes are fetched again
    by_branch = client.run(DOWNLOAD_MANY, via_mirror(), {"files": [{"path": p} for p in files]})
    for p in files:
        assert Path(by_branch.result[key(p)]).read_bytes() == fake_hub.file("org/model", p)
    log = fake_hub.requests()
    assert [r for r in log if r["server"] == "cdn"] == []
    assert [r for r in log if "/resolve/" in r["path"] and r["method"] == "GET"] == []


def test_x_cache_miss_then_hit(fake_hub, mirror):
    sha = fake_hub.sha()
    for path in ("model.safetensors", "config.json"):
        url = f"/org/model/resolve/{sha}/{path}"
        first = mirror.request("GET", url)
        assert first.status == 200 and first.header("X-Cache") == "MISS", first.headers
        assert first.body == fake_hub.file("org/model", path)
        second = mirror.request("GET", url)
        assert second.status == 200 and second.header("X-Cache") == "HIT", second.headers
        assert second.body == first.body
        # by branch: the bytes are cached; the ref may have to be (re)checked upstream
        mirror.request("HEAD", f"/org/model/resolve/main/{path}")
        by_branch = mirror.request("GET", f"/org/model/resolve/main/{path}")
        assert by_branch.header("X-Cache") in ("HIT", "REVALIDATED"), by_branch.headers
        assert by_branch.body == first.body
    r = mirror.request("GET", "/api/models/org/model")
    assert r.status == 200 and r.header("X-Cache") in ("HIT", "MISS", "REVALIDATED")


def test_headers_stable_cold_warm_and_after_restart(fake_hub, mirror):
    sha = fake_hub.sha()
    urls = [f"/org/model/resolve/{rev}/{p}" for rev in (sha, "main")
            for p in ("model.safetensors", "config.json", "we%20ird%23name%3F%2B%C3%A9.txt")]
    urls.append("/org/model/resolve/refs%2Fpr%2F1/extra.safetensors")

    def snapshot():
        out = {}
        for url in urls:
            r = mirror.request("HEAD", url)
            assert r.status == 200, (url, r)
            out[url] = {h: r.header(h) for h in STABLE_HEADERS}
        return out

    cold = snapshot()
    for url in urls:  # fill the blobs
        assert mirror.request("GET", url).status == 200
    warm = snapshot()
    assert warm == cold
    for url, headers in cold.items():
        assert all(headers[h] is not None for h in STABLE_HEADERS), (url, headers)
    mirror.restart()
    assert snapshot() == cold
    # bytes are still there after the restart, without going upstream for them
    fake_hub.reset()
    r = mirror.request("GET", f"/org/model/resolve/{sha}/model.safetensors")
    assert r.status == 200 and r.header("X-Cache") == "HIT"
    assert r.body == fake_hub.file("org/model", "model.safetensors")
    assert [x for x in fake_hub.requests() if x["server"] == "cdn"] == []


def test_range_requests(fake_hub, mirror):
    sha = fake_hub.sha()
    for path in ("model.safetensors", "config.json"):  # the first request of each is a Range on a cold blob
        data = fake_hub.file("org/model", path)
        size = len(data)
        url = f"/org/model/resolve/{sha}/{path}"
        r = mirror.request("GET", url, headers={"Range": "bytes=10-20"})
        assert r.status == 206, r
        assert r.header("Content-Range") == f"bytes 10-20/{size}"
        assert r.header("Content-Length") == "11" and r.body == data[10:21]
        resume = size // 2
        r = mirror.request("GET", url, headers={"Range": f"bytes={resume}-"})
        assert r.status == 206 and r.body == data[resume:]
        assert r.header("Content-Range") == f"bytes {resume}-{size - 1}/{size}"
        assert r.header("Content-Length") == str(size - resume)
        r = mirror.request("GET", url, headers={"Range": f"bytes=0-{size * 10}"})  # end is clamped
        assert r.status == 206 and r.body == data and r.header("Content-Range") == f"bytes 0-{size - 1}/{size}"
        for start in (size, size + 1000):
            r = mirror.request("GET", url, headers={"Range": f"bytes={start}-"})
            assert r.status == 416, r
            assert r.header("Content-Range") == f"bytes */{size}"
            assert r.header("X-Error-Code") == "RangeNotSatisfiable"
        r = mirror.request("GET", url, headers={"Range": "bytes=0-0"})
        assert r.status == 206 and r.body == data[:1]


def test_safetensors_metadata_via_ranges(fake_hub, mirror, client, via_mirror):
    res = client.run("""
from huggingface_hub import get_safetensors_metadata
meta = get_safetensors_metadata("org/model")
result = {name: [t.dtype, t.shape] for name, t in meta.files_metadata["model.safetensors"].tensors.items()}
""", via_mirror())
    header_len = int.from_bytes(fake_hub.file("org/model", "model.safetensors")[:8], "little")
    header = json.loads(fake_hub.file("org/model", "model.safetensors")[8:8 + header_len])
    assert res.result == {"weight": ["U8", header["weight"]["shape"]]}


def test_cli_download(fake_hub, mirror, client, via_mirror, tmp_path):
    env = via_mirror()
    proc = client.cli(hf_cli() + ["download", "org/model", "config.json"], env)
    assert proc.returncode == 0, proc.stderr
    assert cli_path(proc.stdout).read_bytes() == fake_hub.file("org/model", "config.json")
    target = tmp_path / "local-dir"
    proc = client.cli(hf_cli() + ["download", "org/model", "--local-dir", str(target)], env)
    assert proc.returncode == 0, proc.stderr
    assert files_under(target) == {p: fake_hub.file("org/model", p) for p in fake_hub.files()}
    # local_dir metadata records the commit and the etag the mirror announced
    meta = (target / ".cache" / "huggingface" / "download" / "model.safetensors.metadata").read_text().splitlines()
    assert meta[0] == fake_hub.sha() and meta[1] == fake_hub.files()["model.safetensors"]["etag"]
    legacy = legacy_cli()
    if legacy:  # huggingface-cli is the 0.x spelling
        proc = client.cli(legacy + ["download", "org/model", "sub/dir/file.txt", "--revision", "feature/x"], env)
        assert proc.returncode == 0, proc.stderr
        assert cli_path(proc.stdout).read_bytes() == fake_hub.file("org/model", "sub/dir/file.txt", rev="feature/x")


@requires_transformers
def test_transformers_from_mirror(fake_hub, mirror, client, via_mirror):
    env = via_mirror()
    code = """
from transformers import AutoConfig, AutoTokenizer
config = AutoConfig.from_pretrained("org/model")
tok = AutoTokenizer.from_pretrained("org/tiny-tokenizer")
gpt2 = AutoConfig.from_pretrained("gpt2")
result = {"model_type": config.model_type, "hidden_size": config.hidden_size, "marker": config.fake_revision,
          "ids": tok("Hello world mirror unknownword")["input_ids"], "gpt2": gpt2.model_type}
"""
    out = client.run(code, env).result
    assert out == {"model_type": "bert", "hidden_size": 32, "marker": "main-1", "ids": [4, 5, 6, 1], "gpt2": "gpt2"}
    # a second load from the same HF_HOME works too (cache + revalidation)
    assert client.run(code, env).result == out


def test_legacy_id_renamed_repo_and_space(fake_hub, mirror, client, via_mirror):
    specs = [{"repo": "gpt2", "path": "config.json"}, {"repo": "gpt2", "path": "model.safetensors"},
             {"repo": "old-org/renamed", "path": "config.json"}, {"repo": "old-org/renamed", "path": "model.safetensors"},
             {"repo": "org/space", "path": "app.py", "repo_type": "space"},
             {"repo": "org/space", "path": "README.md", "repo_type": "space"},
             {"repo": "org/dataset", "path": "data/train.csv", "repo_type": "dataset"},
             {"repo": "org/dataset", "path": "data/test.jsonl", "repo_type": "dataset"}]
    res = client.run(DOWNLOAD_MANY, via_mirror(), {"files": specs})
    for spec in specs:
        local = Path(res.result[key(spec["path"], repo=spec["repo"])])
        repo_type = spec.get("repo_type") or "model"
        assert f"{repo_type}s--{spec['repo'].replace('/', '--')}/" in local.as_posix()
        source = "org/model" if spec["repo"] == "old-org/renamed" else spec["repo"]
        assert local.read_bytes() == fake_hub.file(source, spec["path"], repo_type=repo_type), spec
    # the renamed repo's 307 is followed by the mirror, not passed to the client
    r = mirror.request("HEAD", "/old-org/renamed/resolve/main/config.json")
    assert r.status == 200 and r.header("X-Repo-Commit") == fake_hub.sha()
    snap = client.run(SNAPSHOT, via_mirror(), {"repo": "gpt2"})
    assert files_under(Path(snap.result)) == {p: fake_hub.file("gpt2", p) for p in fake_hub.files("gpt2")}
    snap = client.run(SNAPSHOT, via_mirror(), {"repo": "org/dataset", "repo_type": "dataset"})
    assert files_under(Path(snap.result)) == {p: fake_hub.file("org/dataset", p, repo_type="dataset")
                                              for p in fake_hub.files("datasets/org/dataset")}
