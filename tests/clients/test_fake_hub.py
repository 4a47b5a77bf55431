"""Real clients pointed DIRECTLY at the fake Hub (HF_HUB_DISABLE_XET=1, since the fake emits Xet
signals like huggingface.co). These prove the fake is faithful enough to test the mirror against."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import (DOWNLOAD_MANY as DOWNLOAD, DOWNLOAD_ONE, HAS_HF_XET, OTHER_TOKEN, VALID_TOKEN, cli_path,
                      files_under, git_blob_sha1, hf_cli, is_remote_entry_not_found, legacy_cli, norm_etag,
                      requires_transformers, sha256_hex)

WEIRD = "we ird#name?+\u00e9.txt"


@pytest.fixture
def direct(fake_hub, client):
    """env factory for clients talking to the fake directly"""
    def make(token=None, **kw):
        return client.env(fake_hub.url, token=token, disable_xet=True, **kw)
    return make


def test_hf_hub_download_regular_lfs_and_odd_names(fake_hub, client, direct):
    files = fake_hub.files()
    names = ["config.json", "model.safetensors", "sub/dir/file.txt", WEIRD, ".gitattributes"]
    env = direct()
    res = client.run(DOWNLOAD, env, {"files": [{"path": n} for n in names]})
    paths = res.result
    main_sha = fake_hub.sha()
    for name in names:
        local = Path(paths[f"org/model:{name}@None"])
        data = local.read_bytes()
        assert data == fake_hub.file("org/model", name)
        # the cache is keyed by the headers: snapshots/<X-Repo-Commit>/path -> blobs/<etag>
        assert local.parent.as_posix().endswith(f"snapshots/{main_sha}" + ("/" + str(Path(name).parent) if "/" in name else ""))
        blob = local.resolve().name
        assert blob == files[name]["etag"]
        assert blob == (sha256_hex(data) if files[name]["lfs"] else git_blob_sha1(data))
    hub_requests = [r for r in fake_hub.requests() if r["server"] == "cdn"]
    assert hub_requests and not any(r["auth"] for r in hub_requests)


def test_revisions(fake_hub, client, direct):
    model = fake_hub.repo_state("org/model")
    specs = [
        {"path": "feature.txt", "revision": "feature/x"},
        {"path": "extra.safetensors", "revision": "refs/pr/1"},
        {"path": "config.json", "revision": "v1.0"},
        {"path": "config.json", "revision": model["refs"]["main"]},
        {"path": "config.json", "revision": model["refs"]["v1.0"][:7]},
    ]
    res = client.run(DOWNLOAD, direct(), {"files": specs})
    for spec in specs:
        rev = spec["revision"]
        sha = model["refs"].get(rev) or next(s for s in model["commits"] if s.startswith(rev))
        local = Path(res.result[f"org/model:{spec['path']}@{rev}"])
        assert local.read_bytes() == fake_hub.file("org/model", spec["path"], rev=sha)
        assert f"/snapshots/{sha}/" in local.as_posix()
    assert b'"fake_revision": "v1.0"' in fake_hub.file("org/model", "config.json", rev="v1.0")
    paths = [r["path"] for r in fake_hub.requests() if r["server"] == "hub"]
    assert any("/resolve/refs%2Fpr%2F1/" in p for p in paths)
    assert any("/resolve/feature%2Fx/" in p for p in paths)


@pytest.mark.parametrize("revision", [None, "feature/x", "refs/pr/1"])
def test_snapshot_download(fake_hub, client, direct, revision):
    res = client.run("""
from huggingface_hub import snapshot_download
result = snapshot_download("org/model", revision=ARGS["revision"])
""", direct(), {"revision": revision})
    root = Path(res.result)
    ref = revision or "main"
    assert root.name == fake_hub.sha(ref=ref)
    expected = {p: fake_hub.file("org/model", p, rev=ref) for p in fake_hub.files(ref=ref)}
    assert files_under(root) == expected


def test_list_repo_files_and_tree_paginate(fake_hub, client, direct):
    res = client.run("""
from huggingface_hub import HfApi
api = HfApi()
files = api.list_repo_files("org/model")
tree = [(e.path, type(e).__name__) for e in api.list_repo_tree("org/model", path_in_repo="sub", recursive=True)]
flat = sorted(e.path for e in api.list_repo_tree("org/model"))
pr = api.list_repo_files("org/model", revision="refs/pr/1")
expanded = [(e.path, e.last_commit.oid if getattr(e, "last_commit", None) else None)
            for e in api.list_repo_tree("org/model", path_in_repo="docs", expand=True)]
result = {"files": files, "tree": tree, "flat": flat, "pr": pr, "expanded": expanded}
""", direct())
    out = res.result
    assert sorted(out["files"]) == sorted(fake_hub.files())
    assert sorted(out["pr"]) == sorted(fake_hub.files(ref="refs/pr/1"))
    assert sorted(map(tuple, out["tree"])) == [("sub/dir", "RepoFolder"), ("sub/dir/deeper", "RepoFolder"),
                                               ("sub/dir/deeper/leaf.txt", "RepoFile"), ("sub/dir/file.txt", "RepoFile"),
                                               ("sub/other.txt", "RepoFile")]
    assert out["flat"] == sorted([".gitattributes", "README.md", "config.json", "docs", "model.safetensors", "sub", WEIRD])
    assert {p for p, _ in out["expanded"]} == {"docs/a.md", "docs/b.md", "docs/c.md"}
    assert all(oid == fake_hub.sha() for _, oid in out["expanded"])
    tree_calls = [r for r in fake_hub.requests() if "/tree/" in r["path"]]
    assert any("cursor=" in r["query"] for r in tree_calls), "pagination was not exercised"
    assert any(r["path"].endswith("/tree/main/sub") or r["path"].endswith("/tree/main/sub%2Fdir") or
               "/tree/main/" in r["path"] for r in tree_calls)


def test_repo_info_endpoints(fake_hub, client, direct):
    res = client.run("""
from huggingface_hub import HfApi
api = HfApi()
m = api.model_info("org/model")
mb = api.model_info("org/model", revision="v1.0", files_metadata=True)
d = api.dataset_info("org/dataset", files_metadata=True)
s = api.space_info("org/space")
g = api.model_info("org/gated")
result = {
  "model": [m.id, m.sha, sorted(x.rfilename for x in m.siblings), m.last_modified.isoformat()],
  "blobs": {x.rfilename: [x.blob_id, x.size, x.lfs.sha256 if x.lfs else None] for x in mb.siblings},
  "blobs_sha": mb.sha,
  "dataset": [d.id, d.sha, {x.rfilename: [x.size, x.lfs.sha256 if x.lfs else None] for x in d.siblings}],
  "space": [s.id, s.sha, sorted(x.rfilename for x in s.siblings)],
  "gated": [g.id, g.gated],
}
""", direct())
    out = res.result
    assert out["model"][:3] == ["org/model", fake_hub.sha(), sorted(fake_hub.files())]
    assert out["model"][3].startswith("2024-01-02T03:04:05")
    v1 = fake_hub.files(ref="v1.0")
    assert out["blobs_sha"] == fake_hub.sha(ref="v1.0")
    for path, (blob_id, size, lfs_sha) in out["blobs"].items():
        assert blob_id == v1[path]["oid"] and size == v1[path]["size"]
        assert lfs_sha == (v1[path]["sha256"] if v1[path]["lfs"] else None)
    ds_files = fake_hub.files("datasets/org/dataset")
    assert out["dataset"][0:2] == ["org/dataset", fake_hub.sha("datasets/org/dataset")]
    assert out["dataset"][2]["data/train.csv"] == [ds_files["data/train.csv"]["size"], ds_files["data/train.csv"]["sha256"]]
    assert out["space"] == ["org/space", fake_hub.sha("spaces/org/space"), sorted(fake_hub.files("spaces/org/space"))]
    assert out["gated"] == ["org/gated", "auto"]


def test_paths_info_refs_listings_whoami(fake_hub, client, direct):
    res = client.run("""
from huggingface_hub import HfApi
api = HfApi()
info = api.get_paths_info("org/model", ["config.json", "sub", "nope", "model.safetensors"], revision="main")
refs = api.list_repo_refs("org/model", include_pull_requests=True)
models = sorted(m.id for m in api.list_models(author="org"))
searched = sorted(m.id for m in api.list_models(search="model"))
datasets = [d.id for d in api.list_datasets(author="org")]
limited = [m.id for m in api.list_models(limit=2)]
everything = sorted(m.id for m in api.list_models())
who = api.whoami(token=ARGS["token"])
result = {
  "info": {e.path: [type(e).__name__, getattr(e, "lfs", None) and e.lfs["sha256"] if hasattr(e, "lfs") and e.lfs else None] for e in info},
  "branches": {b.name: b.target_commit for b in refs.branches},
  "tags": {t.name: t.target_commit for t in refs.tags},
  "prs": {p.ref: p.target_commit for p in refs.pull_requests},
  "converts": list(refs.converts),
  "models": models, "everything": everything, "searched": searched, "datasets": datasets, "limited": limited,
  "whoami": [who["name"], [o["name"] for o in who.get("orgs", [])]],
}
""", direct(), {"token": VALID_TOKEN})
    out = res.result
    model = fake_hub.repo_state("org/model")
    assert set(out["info"]) == {"config.json", "sub", "model.safetensors"}
    assert out["info"]["sub"][0] == "RepoFolder"
    assert out["info"]["model.safetensors"] == ["RepoFile", fake_hub.files()["model.safetensors"]["sha256"]]
    assert out["branches"] == model["branches"]
    assert out["tags"] == model["tags"]
    assert out["prs"] == model["pull_requests"]
    assert out["converts"] == []
    # org/private is hidden from anonymous listings
    assert out["models"] == ["org/gated", "org/model", "org/tiny-tokenizer"]
    assert out["searched"] == ["org/model"]
    assert out["datasets"] == ["org/dataset"]
    assert len(out["limited"]) == 2
    assert out["everything"] == ["gpt2", "org/gated", "org/model", "org/tiny-tokenizer"]
    assert out["whoami"] == ["alice", ["org"]]
    listing = [r for r in fake_hub.requests() if r["path"] == "/api/models"]
    assert any("cursor=" in r["query"] for r in listing)



def test_error_classes(fake_hub, client, direct):
    def run(repo, path, token=None, revision=None):
        return client.run(DOWNLOAD_ONE, direct(token), {"repo": repo, "path": path, "revision": revision})

    r = run("org/nope", "config.json")
    assert r.raised("RepositoryNotFoundError") and r.status == 401, r
    r = run("org/nope", "config.json", token=VALID_TOKEN)
    assert r.raised("RepositoryNotFoundError") and r.status == 404, r
    r = run("org/private", "config.json")
    assert r.raised("RepositoryNotFoundError") and not r.raised("GatedRepoError") and r.status == 401, r
    r = run("org/private", "config.json", token=OTHER_TOKEN)
    assert r.raised("RepositoryNotFoundError") and r.status == 404, r
    r = run("org/gated", "model.safetensors")
    assert r.raised("GatedRepoError") and r.status == 401, r
    r = run("org/gated", "model.safetensors", token=OTHER_TOKEN)
    assert r.raised("GatedRepoError") and r.status == 403, r
    r = run("org/model", "config.json", revision="nope")
    assert r.raised("RevisionNotFoundError") and r.status == 404, r
    r = run("org/model", "nope.json")
    assert is_remote_entry_not_found(r) and r.status == 404, r

    res = client.run("""
from huggingface_hub import HfApi
try:
    list(HfApi().list_repo_tree("org/model", path_in_repo="nope"))
    result = "no error"
except Exception as e:
    result = [c.__name__ for c in type(e).__mro__]
""", direct())
    assert "EntryNotFoundError" in res.result and "RepositoryNotFoundError" not in res.result


def test_private_and_gated_with_token(fake_hub, client, direct):
    fake_hub.reset()
    specs = [{"repo": "org/private", "path": "secret.bin"}, {"repo": "org/private", "path": "config.json"},
             {"repo": "org/gated", "path": "model.safetensors"}]
    res = client.run(DOWNLOAD, direct(VALID_TOKEN), {"files": specs})
    for spec in specs:
        assert Path(res.result[f"{spec['repo']}:{spec['path']}@None"]).read_bytes() == fake_hub.file(spec["repo"], spec["path"])
    log = fake_hub.requests()
    assert all(r["auth"] for r in log if r["server"] == "hub" and "/resolve/" in r["path"])
    cdn = [r for r in log if r["server"] == "cdn"]
    assert cdn and not any(r["auth"] for r in cdn)


def test_legacy_id_renamed_repo_and_space(fake_hub, client, direct):
    specs = [{"repo": "gpt2", "path": "config.json"}, {"repo": "gpt2", "path": "model.safetensors"},
             {"repo": "old-org/renamed", "path": "config.json"}, {"repo": "old-org/renamed", "path": "model.safetensors"},
             {"repo": "org/space", "path": "app.py", "repo_type": "space"},
             {"repo": "org/dataset", "path": "data/train.csv", "repo_type": "dataset"}]
    res = client.run(DOWNLOAD, direct(), {"files": specs})
    out = res.result
    for spec in specs:
        local = Path(out[f"{spec['repo']}:{spec['path']}@None"])
        folder = {"model": "models", "space": "spaces", "dataset": "datasets"}[spec.get("repo_type") or "model"]
        # the cache folder keeps the id the user typed (renamed repos too)
        assert f"{folder}--{spec['repo'].replace('/', '--')}/" in local.as_posix()
        source = "org/model" if spec["repo"] == "old-org/renamed" else spec["repo"]
        assert local.read_bytes() == fake_hub.file(source, spec["path"], repo_type=spec.get("repo_type") or "model")
    assert any(r["path"].startswith("/old-org/renamed/resolve/") for r in fake_hub.requests())


@requires_transformers
def test_transformers_auto_classes(fake_hub, client, direct):
    res = client.run("""
from transformers import AutoConfig, AutoTokenizer
config = AutoConfig.from_pretrained("org/model")
tok = AutoTokenizer.from_pretrained("org/tiny-tokenizer")
gpt2 = AutoConfig.from_pretrained("gpt2")
result = {"model_type": config.model_type, "hidden_size": config.hidden_size,
          "ids": tok("Hello world mirror unknownword")["input_ids"], "tok_class": type(tok).__name__,
          "gpt2": gpt2.model_type}
""", direct())
    out = res.result
    assert out["model_type"] == "bert" and out["hidden_size"] == 32
    assert out["ids"] == [4, 5, 6, 1]
    assert out["gpt2"] == "gpt2"


def test_cli_download(fake_hub, client, direct, tmp_path):
    env = direct()
    proc = client.cli(hf_cli() + ["download", "org/model", "config.json"], env)
    assert proc.returncode == 0, proc.stderr
    assert cli_path(proc.stdout).read_bytes() == fake_hub.file("org/model", "config.json")
    target = tmp_path / "local"
    proc = client.cli(hf_cli() + ["download", "org/model", "--local-dir", str(target)], env)
    assert proc.returncode == 0, proc.stderr
    assert files_under(target) == {p: fake_hub.file("org/model", p) for p in fake_hub.files()}
    legacy = legacy_cli()
    if legacy:
        proc = client.cli(legacy + ["download", "org/model", "sub/dir/file.txt"], env)
        assert proc.returncode == 0, proc.stderr
        assert cli_path(proc.stdout).read_bytes() == fake_hub.file("org/model", "sub/dir/file.txt")


def test_raw_contract(fake_hub):
    sha = fake_hub.sha()
    files = fake_hub.files()
    # regular file: 200 with the §2.6 headers
    r = fake_hub.request("HEAD", "/org/model/resolve/main/config.json")
    assert r.status == 200
    assert r.header("X-Repo-Commit") == sha
    assert norm_etag(r.header("ETag")) == norm_etag(r.header("X-Linked-Etag")) == files["config.json"]["oid"]
    assert r.header("X-Linked-Size") == r.header("Content-Length") == str(files["config.json"]["size"])
    assert r.header("Accept-Ranges") == "bytes"
    # LFS: 302 to another host name, with Xet signals and a plain ETag that is not the sha256
    r = fake_hub.request("HEAD", "/org/model/resolve/main/model.safetensors")
    lfs = files["model.safetensors"]
    assert r.status == 302
    assert norm_etag(r.header("X-Linked-Etag")) == lfs["sha256"]
    assert norm_etag(r.header("ETag")) != lfs["sha256"]
    assert r.header("X-Linked-Size") == str(lfs["size"])
    assert r.header("X-Xet-Hash") and r.header("X-Xet-Refresh-Route")
    assert 'rel="xet-auth"' in r.header("Link") and 'rel="xet-reconstruction-info"' in r.header("Link")
    location = r.header("Location")
    assert location.startswith(fake_hub.cdn_url + "/") and lfs["sha256"] in location
    assert int(r.header("Content-Length")) > 0
    # xet-read-token points to a dead CAS
    token_url = r.header("Link").split(">")[0].lstrip("<")
    t = fake_hub.request("GET", token_url)
    assert t.status == 200 and t.header("X-Xet-Cas-Url") and t.header("X-Xet-Access-Token")
    # CDN: Range, 416, Authorization rejected, signature checked
    data = fake_hub.file("org/model", "model.safetensors")
    c = fake_hub.request("GET", location, headers={"Range": "bytes=10-20"})
    assert c.status == 206 and c.body == data[10:21] and c.header("Content-Range") == f"bytes 10-20/{len(data)}"
    c = fake_hub.request("GET", location, headers={"Range": f"bytes={len(data)}-"})
    assert c.status == 416 and c.header("Content-Range") == f"bytes */{len(data)}"
    c = fake_hub.request("GET", location, headers={"Authorization": "Bearer " + VALID_TOKEN})
    assert c.status == 400
    c = fake_hub.request("GET", location.split("?")[0])
    assert c.status == 403
    c = fake_hub.request("GET", location)
    assert c.status == 200 and c.body == data
    # resolve Range and 416 on a regular file
    cfg = fake_hub.file("org/model", "config.json")
    r = fake_hub.request("GET", "/org/model/resolve/main/config.json", headers={"Range": "bytes=5-"})
    assert r.status == 206 and r.body == cfg[5:]
    r = fake_hub.request("GET", "/org/model/resolve/main/config.json", headers={"Range": f"bytes={len(cfg)}-"})
    assert r.status == 416 and r.header("Content-Range") == f"bytes */{len(cfg)}"
    # errors
    r = fake_hub.request("HEAD", "/org/model/resolve/main/nope.json")
    assert (r.status, r.header("X-Error-Code"), r.header("X-Repo-Commit")) == (404, "EntryNotFound", sha)
    r = fake_hub.request("GET", "/org/model/resolve/nope/config.json")
    assert (r.status, r.header("X-Error-Code")) == (404, "RevisionNotFound") and r.json()["error"]
    r = fake_hub.request("GET", "/api/models/org/model/tree/main/nope")
    assert (r.status, r.header("X-Error-Code")) == (404, "EntryNotFound")
    r = fake_hub.request("GET", "/api/models/org/nope", headers={"Authorization": "Bearer " + OTHER_TOKEN})
    assert (r.status, r.header("X-Error-Code")) == (404, "RepoNotFound")
    r = fake_hub.request("GET", "/api/models/org/gated/tree/main")
    assert r.status == 200
    # tree: xetHash, absolute Link on the fake's origin, every boolean spelling
    r = fake_hub.request("GET", "/api/models/org/model/tree/main?recursive=True&expand=False")
    assert r.header("Link").startswith(f"<{fake_hub.url}/api/models/org/model/tree/main?") and 'rel="next"' in r.header("Link")
    seen = []
    for spelling in ("true", "True", "1"):
        url, entries = f"/api/models/org/model/tree/main?recursive={spelling}", []
        while url:
            page = fake_hub.request("GET", url)
            entries += page.json()
            link = page.header("Link")
            url = link.split(">")[0].lstrip("<") if link else None
        seen.append(sorted(e["path"] for e in entries))
        assert any("xetHash" in e for e in entries)
    assert seen[0] == seen[1] == seen[2]
    assert set(seen[0]) == set(files) | set(fake_hub.repo_state("org/model")["commits"][sha]["dirs"])
    r = fake_hub.request("GET", "/api/models/org/model/tree/main/sub%2Fdir?recursive=false")
    assert sorted(e["path"] for e in r.json()) == ["sub/dir/deeper", "sub/dir/file.txt"]
    r = fake_hub.request("POST", "/api/models/org/model/paths-info/main",
                         headers={"Content-Type": "application/json"},
                         body=b'{"paths": ["model.safetensors", "nope"], "expand": false}')
    assert [e["path"] for e in r.json()] == ["model.safetensors"] and "xetHash" in r.json()[0]
    # renamed repo: relative 307
    r = fake_hub.request("HEAD", "/old-org/renamed/resolve/main/config.json")
    assert r.status == 307 and r.header("Location") == "/org/model/resolve/main/config.json"
    r = fake_hub.request("GET", "/api/models/old-org/renamed/revision/main?x=1")
    assert r.status == 307 and r.header("Location") == "/api/models/org/model/revision/main?x=1"
    # request log fields
    log = fake_hub.requests()
    assert {"server", "method", "path", "query", "auth"} <= set(log[-1])
    assert any(e["server"] == "cdn" for e in log)


def test_control_endpoints(fake_hub, client, direct):
    old = fake_hub.sha()
    prepared = fake_hub.repo_state("org/model")["prepared"]["main"]
    new = fake_hub.move_branch()
    assert new == prepared != old and fake_hub.move_branch() == new  # idempotent
    r = fake_hub.request("HEAD", "/org/model/resolve/main/new_file.txt")
    assert r.status == 200 and r.header("X-Repo-Commit") == new
    r = fake_hub.request("HEAD", f"/org/model/resolve/{old}/config.json")  # old commit still reachable by sha
    assert r.status == 200 and r.header("X-Repo-Commit") == old
    fake_hub.down(True)
    r = fake_hub.request("GET", "/api/models/org/model")
    assert r.status == 503 and r.header("X-Error-Code") and r.json()["error"]
    r = http_cdn = fake_hub.request("GET", fake_hub.cdn_url + "/repos/00/00/" + "0" * 64)
    assert http_cdn.status == 503
    fake_hub.down(False)
    fake_hub.reset()
    assert fake_hub.requests() == []
    fake_hub.throttle(0)
    res = client.run(DOWNLOAD_ONE, direct(), {"repo": "org/model", "path": "config.json"})
    assert Path(res.result).read_bytes() == fake_hub.file("org/model", "config.json", rev=new)


@pytest.mark.skipif(not HAS_HF_XET, reason="hf_xet is not installed in this venv")
def test_xet_signals_are_effective(fake_hub, client):
    """Without HF_HUB_DISABLE_XET the client takes the Xet path on the fake's signals (and fails on
    the dead CAS): the signals the mirror must strip are real."""
    env = client.env(fake_hub.url)
    res = client.run(DOWNLOAD_ONE, env, {"repo": "org/model", "path": "model.safetensors"})
    assert not res.ok, res
    assert any("/xet-read-token/" in r["path"] for r in fake_hub.requests())
    assert not any(r["server"] == "cdn" for r in fake_hub.requests())
