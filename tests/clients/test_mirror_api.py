"""The /api/ side through the mirror: tree (pagination, encodings, booleans), repo info, paths-info,
refs, and Xet stripping (hf_xet is installed and HF_HUB_DISABLE_XET is not set)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import DOWNLOAD_MANY, SNAPSHOT, files_under, key, norm_etag

WEIRD = "we ird#name?+\u00e9.txt"
RE_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def follow_pages(mirror, path: str, max_links: int = 100) -> tuple[list[dict], list[str]]:
    """GETs a listing and every Link rel=next page; returns (entries, links)."""
    entries, links, url = [], [], path
    while url:
        r = mirror.request("GET", url)
        assert r.status == 200, r
        assert b"xetHash" not in r.body
        entries += r.json()
        link = r.header("Link")
        url = None
        if link:
            m = re.search(r'<([^>]+)>\s*;\s*rel="next"', link)
            if m:
                url = m.group(1)
                links.append(url)
                assert url.startswith(mirror.url + "/"), f"Link must be absolute on the mirror's origin: {link}"
        assert len(links) < max_links
    return entries, links


def test_tree_pagination_encodings_and_booleans(fake_hub, mirror):
    sha = fake_hub.sha()
    model = fake_hub.repo_state("org/model")
    expected = set(fake_hub.files()) | set(model["commits"][sha]["dirs"])
    listings = []
    for spelling in ("true", "True", "1"):
        for rev in ("main", sha):
            entries, _ = follow_pages(mirror, f"/api/models/org/model/tree/{rev}?recursive={spelling}&expand=false")
            listings.append(sorted(e["path"] for e in entries))
            files = {e["path"]: e for e in entries if e["type"] == "file"}
            for path, meta in fake_hub.files().items():
                assert files[path]["size"] == meta["size"] and files[path]["oid"] == meta["oid"]
                if meta["lfs"]:
                    assert files[path]["lfs"]["oid"] == meta["sha256"]
                    assert files[path]["lfs"]["size"] == meta["size"]
                    assert files[path]["lfs"]["pointerSize"] == meta["pointer_size"]
    assert all(listing == sorted(expected) for listing in listings)
    for spelling in ("false", "False", "0"):
        entries, _ = follow_pages(mirror, f"/api/models/org/model/tree/main?recursive={spelling}")
        assert sorted(e["path"] for e in entries) == sorted(
            [".gitattributes", "README.md", "config.json", "docs", "model.safetensors", "sub", WEIRD])
    entries, _ = follow_pages(mirror, "/api/models/org/model/tree/main/sub%2Fdir")
    assert sorted(e["path"] for e in entries) == ["sub/dir/deeper", "sub/dir/file.txt"]
    entries, _ = follow_pages(mirror, "/api/models/org/model/tree/feature%2Fx?recursive=true")
    assert "feature.txt" in {e["path"] for e in entries}
    entries, _ = follow_pages(mirror, "/api/models/org/model/tree/refs%2Fpr%2F1?recursive=true")
    assert "extra.safetensors" in {e["path"] for e in entries}


def test_a_repo_larger_than_a_manifest_page_lists_and_serves_like_upstream(fake_hub, mirror):
    """datasets/wide/files has 1,103 entries, so the mirror stores its manifest in pages of 1,024 and
    reads one page per lookup: listings (followed by cursor, and by an older release's numeric cursor),
    paths-info and downloads must not tell."""
    repo = "datasets/wide/files"
    state = fake_hub.repo_state(repo)
    commit = state["commits"][fake_hub.sha(repo)]
    everything = sorted(set(commit["files"]) | set(commit["dirs"]))
    assert len(everything) > 1024
    entries, links = follow_pages(mirror, "/api/datasets/wide/files/tree/main?recursive=true", max_links=1000)
    paths = [e["path"] for e in entries]
    assert len(paths) == len(set(paths)) and sorted(paths) == everything
    assert len(links) == (len(everything) - 1) // 4, "a page of 4 per request, to the last entry"
    assert all("cursor=p" in link for link in links)
    top, _ = follow_pages(mirror, "/api/datasets/wide/files/tree/main")
    assert sorted(e["path"] for e in top) == ["README.md", "data"]
    data, _ = follow_pages(mirror, "/api/datasets/wide/files/tree/main/data")
    assert sorted(e["path"] for e in data) == ["data/test", "data/train"]
    test_split, _ = follow_pages(mirror, "/api/datasets/wide/files/tree/main/data/test", max_links=1000)
    assert [e["path"] for e in test_split] == [f"data/test/part-{i:04}.txt" for i in range(99)]
    # A numeric cursor, as releases before paged manifests wrote it, is an offset into the listing.
    r = mirror.request("GET", "/api/datasets/wide/files/tree/main?recursive=true&cursor=1000")
    assert r.status == 200 and [e["path"] for e in r.json()] == paths[1000:1004]
    for bad in ("pzz", "-1", "p" + "61" * 5000):
        r = mirror.request("GET", f"/api/datasets/wide/files/tree/main?recursive=true&cursor={bad}")
        assert r.status == 400 and b"Invalid cursor" in r.body, (bad, r)
    r = mirror.request("GET", "/api/datasets/wide/files/tree/main/data/nope")
    assert r.status == 404 and r.header("X-Error-Code") == "EntryNotFound"
    wanted = ["README.md", "data/test/part-0098.txt", "data/train/part-0000.txt", "data/train/part-0999.txt", "nope.txt"]
    r = mirror.request("POST", "/api/datasets/wide/files/paths-info/main", body=json.dumps({"paths": wanted}).encode(),
                       headers={"Content-Type": "application/json"})
    assert r.status == 200, r
    assert sorted(e["path"] for e in r.json()) == sorted(wanted[:4])
    for path in ("data/test/part-0098.txt", "data/train/part-0999.txt", "data/train/part-0000.txt"):
        r = mirror.request("GET", f"/datasets/wide/files/resolve/main/{path}")
        assert r.status == 200 and r.body == fake_hub.file("wide/files", path, repo_type="dataset"), (path, r)


def test_list_repo_files_and_tree_clients(fake_hub, mirror, client, via_mirror):
    out = client.run("""
from huggingface_hub import HfApi
api = HfApi()
result = {
  "files": api.list_repo_files("org/model"),
  "pr": api.list_repo_files("org/model", revision="refs/pr/1"),
  "feature": api.list_repo_files("org/model", revision="feature/x"),
  "dataset": api.list_repo_files("org/dataset", repo_type="dataset"),
  "sub": sorted([e.path, type(e).__name__] for e in api.list_repo_tree("org/model", path_in_repo="sub", recursive=True)),
  "root": sorted(e.path for e in api.list_repo_tree("org/model")),
  "lfs": [[e.path, e.lfs["sha256"] if isinstance(e.lfs, dict) else e.lfs.sha256, getattr(e, "xet_hash", None)]
          for e in api.list_repo_tree("org/model") if getattr(e, "lfs", None)],
}
""", via_mirror()).result
    assert sorted(out["files"]) == sorted(fake_hub.files())
    assert sorted(out["pr"]) == sorted(fake_hub.files(ref="refs/pr/1"))
    assert sorted(out["feature"]) == sorted(fake_hub.files(ref="feature/x"))
    assert sorted(out["dataset"]) == sorted(fake_hub.files("datasets/org/dataset"))
    assert out["sub"] == [["sub/dir", "RepoFolder"], ["sub/dir/deeper", "RepoFolder"],
                          ["sub/dir/deeper/leaf.txt", "RepoFile"], ["sub/dir/file.txt", "RepoFile"],
                          ["sub/other.txt", "RepoFile"]]
    assert out["root"] == sorted([".gitattributes", "README.md", "config.json", "docs", "model.safetensors", "sub", WEIRD])
    assert out["lfs"] == [["model.safetensors", fake_hub.files()["model.safetensors"]["sha256"], None]]


def test_repo_info(fake_hub, mirror, client, via_mirror):
    out = client.run("""
from huggingface_hub import HfApi
api = HfApi()
m = api.model_info("org/model")
v1 = api.model_info("org/model", revision="v1.0", files_metadata=True)
pr = api.model_info("org/model", revision="refs/pr/1")
d = api.dataset_info("org/dataset", files_metadata=True)
g = api.model_info("org/gated")
result = {
  "model": [m.id, m.sha, sorted(s.rfilename for s in m.siblings), m.last_modified.isoformat(), m.created_at.isoformat()],
  "v1": [v1.sha, {s.rfilename: [s.blob_id, s.size, s.lfs.sha256 if s.lfs else None] for s in v1.siblings}],
  "pr": pr.sha,
  "dataset": [d.id, d.sha, {s.rfilename: [s.size, s.lfs.sha256 if s.lfs else None] for s in d.siblings}],
  "gated": [g.id, g.gated],
}
""", via_mirror()).result
    assert out["model"][:3] == ["org/model", fake_hub.sha(), sorted(fake_hub.files())]
    assert out["model"][3].startswith("2024-01-02T03:04:05")
    v1 = fake_hub.files(ref="v1.0")
    assert out["v1"][0] == fake_hub.sha(ref="v1.0")
    assert out["v1"][1] == {p: [m["oid"], m["size"], m.get("sha256")] for p, m in v1.items()}
    assert out["pr"] == fake_hub.sha(ref="refs/pr/1")
    ds = fake_hub.files("datasets/org/dataset")
    assert out["dataset"] == ["org/dataset", fake_hub.sha("datasets/org/dataset"),
                              {p: [m["size"], m.get("sha256")] for p, m in ds.items()}]
    assert out["gated"] == ["org/gated", "auto"]
    # raw: date format and the sha agree with X-Repo-Commit
    for path in ("/api/models/org/model", "/api/models/org/model/revision/main", "/api/models/org/model/revision/feature%2Fx",
                 "/api/datasets/org/dataset/revision/main", "/api/models/gpt2/revision/main"):
        r = mirror.request("GET", path)
        assert r.status == 200, r
        body = r.json()
        assert RE_DATE.match(body["lastModified"]), body["lastModified"]
        assert "+00:00" not in r.body.decode()
        assert re.fullmatch(r"[0-9a-f]{40}", body["sha"])
    head = mirror.request("HEAD", "/org/model/resolve/main/config.json")
    assert head.header("X-Repo-Commit") == mirror.request("GET", "/api/models/org/model/revision/main").json()["sha"]


def test_paths_info_and_refs(fake_hub, mirror, client, via_mirror):
    out = client.run("""
from huggingface_hub import HfApi
api = HfApi()
info = api.get_paths_info("org/model", ["config.json", "sub", "nope", "model.safetensors", ARGS["weird"]], revision="main")
refs = api.list_repo_refs("org/model", include_pull_requests=True)
plain = api.list_repo_refs("org/model")
result = {
  "info": {e.path: [type(e).__name__, getattr(e, "size", None),
                    (e.lfs["sha256"] if isinstance(e.lfs, dict) else e.lfs.sha256) if getattr(e, "lfs", None) else None,
                    getattr(e, "xet_hash", None)] for e in info},
  "branches": {b.name: b.target_commit for b in refs.branches},
  "tags": {t.name: t.target_commit for t in refs.tags},
  "prs": {p.ref: p.target_commit for p in refs.pull_requests},
  "converts": list(refs.converts),
  "plain_branches": sorted(b.name for b in plain.branches),
}
""", via_mirror(), {"weird": WEIRD}).result
    files = fake_hub.files()
    assert out["info"] == {
        "config.json": ["RepoFile", files["config.json"]["size"], None, None],
        "sub": ["RepoFolder", None, None, None],
        "model.safetensors": ["RepoFile", files["model.safetensors"]["size"], files["model.safetensors"]["sha256"], None],
        WEIRD: ["RepoFile", files[WEIRD]["size"], None, None],
    }
    model = fake_hub.repo_state("org/model")
    assert out["branches"] == model["branches"]
    assert out["tags"] == model["tags"]
    assert out["prs"] == model["pull_requests"]
    assert out["converts"] == []
    assert out["plain_branches"] == sorted(model["branches"])
    # raw paths-info, form and JSON bodies, never with xetHash
    for body, ctype in ((b"paths=model.safetensors&paths=config.json&expand=false", "application/x-www-form-urlencoded"),
                        (b'{"paths": ["model.safetensors", "config.json"], "expand": false}', "application/json")):
        r = mirror.request("POST", "/api/models/org/model/paths-info/main", headers={"Content-Type": ctype}, body=body)
        assert r.status == 200, r
        assert sorted(e["path"] for e in r.json()) == ["config.json", "model.safetensors"]
        assert b"xetHash" not in r.body


def test_xet_is_stripped(fake_hub, mirror, client, via_mirror):
    """hf_xet is installed and not disabled: every client must still download over plain HTTP."""
    sha = fake_hub.sha()
    lfs = fake_hub.files()["model.safetensors"]
    for path in ("/org/model/resolve/main/model.safetensors", f"/org/model/resolve/{sha}/model.safetensors",
                 "/org/model/resolve/refs%2Fpr%2F1/extra.safetensors", "/datasets/org/dataset/resolve/main/data/train.csv"):
        for method in ("HEAD", "GET"):
            r = mirror.request(method, path)
            assert r.status == 200, r
            names = [k.lower() for k, _ in r.header_list]
            assert not [n for n in names if n.startswith("x-xet-")], r.header_list
            for link in r.headers_named("Link"):
                assert "xet-auth" not in link and "xet-reconstruction-info" not in link, link
            assert r.header("Location") is None
    r = mirror.request("HEAD", "/org/model/resolve/main/model.safetensors")
    assert norm_etag(r.header("ETag")) == norm_etag(r.header("X-Linked-Etag")) == lfs["sha256"]
    for path in ("/api/models/org/model/tree/main?recursive=true", f"/api/models/org/model/tree/{sha}?recursive=True&expand=True",
                 "/api/datasets/org/dataset/tree/main/data"):
        entries, _ = follow_pages(mirror, path)
        assert entries and not any("xetHash" in e for e in entries)
    fake_hub.reset()
    specs = [{"path": "model.safetensors"}, {"path": "extra.safetensors", "revision": "refs/pr/1"},
             {"repo": "org/dataset", "path": "data/train.csv", "repo_type": "dataset"}]
    res = client.run(DOWNLOAD_MANY, via_mirror(), {"files": specs})
    assert Path(res.result[key("model.safetensors")]).read_bytes() == fake_hub.file("org/model", "model.safetensors")
    assert Path(res.result[key("extra.safetensors", revision="refs/pr/1")]).read_bytes() == \
        fake_hub.file("org/model", "extra.safetensors", rev="refs/pr/1")
    assert Path(res.result[key("data/train.csv", repo="org/dataset")]).read_bytes() == \
        fake_hub.file("org/dataset", "data/train.csv", repo_type="dataset")
    # snapshot_download (>= 1.22 reads the tree, where xetHash would make it skip HEAD and go Xet)
    snap = client.run(SNAPSHOT, via_mirror(), {"revision": sha})
    assert files_under(Path(snap.result)) == {p: fake_hub.file("org/model", p) for p in fake_hub.files()}
    assert not any("xet-read-token" in r["path"] for r in fake_hub.requests())
