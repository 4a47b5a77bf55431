"""The rest of the ecosystem through the mirror (issue 15): `datasets` 5.x `load_dataset` of repos with
a YAML `configs:` block (also `streaming=True`), `HfFileSystem` (ls, glob, info, ranged reads, a read at
end of file), `hf cache verify` after a snapshot, `hf models ls -R` and `hf download --include
--local-dir`. Every value read is compared with the fake Hub's own bytes.

Runs in the `eco` venv (huggingface_hub 2.4.0 + hf_xet + datasets 5.2.0); tests/clients/run.sh runs
only this file there, and this file nowhere else. hf_xet stays installed and HF_HUB_DISABLE_XET unset
on the mirror runs, so a leaked Xet signal would break them.

`datasets` asks `http://datasets-server.<endpoint host>:<port>/info` before each load (timeout 100 s,
errors swallowed). For 127.0.0.1 that name goes to whatever resolver the machine has, so the datasets
runs resolve it the way a node's zone does (NXDOMAIN at once) through a `sitecustomize` that answers
only `datasets-server.*` names and records that they were asked for. Nothing else in the client is
touched.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import urllib.parse
from pathlib import Path

import pytest

from conftest import cli_path, files_under, hf_cli, wait_until

HAS_DATASETS = importlib.util.find_spec("datasets") is not None
DATASETS_VERSION = importlib.metadata.version("datasets") if HAS_DATASETS else None

ECO_REPOS = ("eco/csv", "eco/jsonl", "eco/parquet")
LFS_CSV = "csv/train.csv"          # in datasets/eco/csv: an LFS file (*.csv is LFS)
REGULAR_JSONL = "jsonl/train-00000-of-00002.jsonl"  # in datasets/eco/jsonl: a regular git file


@pytest.fixture(autouse=True)
def _eco_venv():
    if not HAS_DATASETS:
        pytest.fail("`datasets` is not installed in this venv: test_ecosystem.py runs in the `eco` venv "
                    "(tests/clients/setup-venvs.sh; tests/clients/run.sh runs it there)")
    if not DATASETS_VERSION.startswith("5."):
        pytest.fail(f"test_ecosystem.py targets datasets 5.x, this venv has {DATASETS_VERSION}")


@pytest.fixture(params=["mirror", "fake_hub"])
def endpoint(request, fake_hub, client):
    """env factory for the mirror (hf_xet live) or, to show the fake behaves like the Hub for these
    clients, for the fake Hub directly (HF_HUB_DISABLE_XET=1: it emits Xet signals like huggingface.co)."""
    if request.param == "mirror":
        mirror = request.getfixturevalue("mirror")
        return "mirror", mirror, lambda **kw: client.env(mirror.url, **kw)
    return "fake_hub", None, lambda **kw: client.env(fake_hub.url, disable_xet=True, **kw)


# ---------------------------------------------------------------------------------------------
# helpers


SITECUSTOMIZE = '''\
import os, socket
_real_getaddrinfo = socket.getaddrinfo
def _getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name.startswith("datasets-server."):
        with open(os.environ["ECO_DNS_LOG"], "a") as log:
            log.write(name + "\\n")
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _real_getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _getaddrinfo
'''


def datasets_env(make_env, tmp_path: Path) -> tuple[dict, Path]:
    """The client env plus the resolver stand-in (see the module docstring); returns the env and the
    file where the asked-for datasets-server names are recorded."""
    hook = tmp_path / "resolver"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    dns_log = tmp_path / "dns-asked.txt"
    env = make_env(extra={"PYTHONPATH": str(hook), "ECO_DNS_LOG": str(dns_log),
                          "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    return env, dns_log


def access_lines(mirror) -> list[dict]:
    lines = []
    for path in sorted((mirror.data_dir / "logs").glob("access-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def card_configs(card: bytes) -> list[dict]:
    """The `configs:` of a dataset card's YAML header (pyyaml comes with datasets)."""
    import yaml
    text = card.decode()
    assert text.startswith("---\n"), text[:200]
    header = text[4:text.index("\n---\n", 4)]
    return yaml.safe_load(header)["configs"]


def config_splits(config: dict, files: list[str]) -> dict[str, list[str]]:
    """split -> the repo files the config's data_files patterns select, sorted."""
    data_files = config["data_files"]
    if isinstance(data_files, (str, list)) and not (isinstance(data_files, list) and data_files and isinstance(data_files[0], dict)):
        data_files = [{"split": "train", "path": data_files}]
    out = {}
    for entry in data_files:
        patterns = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
        out[entry["split"]] = sorted(f for f in files if any(fnmatch.fnmatchcase(f, p) for p in patterns))
        assert out[entry["split"]], (config, entry)
    return out


def parse_rows(path: str, data: bytes) -> list[dict]:
    """The rows of one data file, parsed here independently of `datasets`."""
    if path.endswith(".csv"):
        return [{"id": int(r["id"]), "text": r["text"], "score": float(r["score"])}
                for r in csv.DictReader(io.StringIO(data.decode()))]
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        return pq.read_table(io.BytesIO(data)).to_pylist()
    raise AssertionError(path)


def expected_dataset(fake_hub, repo: str) -> dict[str, dict[str, list[dict]]]:
    """config -> split -> rows, from the fake Hub's card and files."""
    key = f"datasets/{repo}"
    files = sorted(fake_hub.files(key))
    configs = card_configs(fake_hub.file(repo, "README.md", repo_type="dataset"))
    out = {}
    for config in configs:
        out[config["config_name"]] = {
            split: [row for path in paths for row in parse_rows(path, fake_hub.file(repo, path, repo_type="dataset"))]
            for split, paths in config_splits(config, files).items()
        }
    return out


LOAD = """
import datasets
out = {}
for repo in ARGS["repos"]:
    entry = out[repo] = {"config_names": datasets.get_dataset_config_names(repo), "configs": {}, "features": {}}
    for name in ARGS["configs"][repo]:
        d = datasets.load_dataset(repo, name, streaming=ARGS["streaming"])
        if ARGS["streaming"]:
            entry["configs"][name] = {split: list(d[split]) for split in d}
        else:
            entry["configs"][name] = {split: d[split].to_list() for split in d}
            entry["features"][name] = {split: {col: getattr(f, "dtype", type(f).__name__)
                                               for col, f in d[split].features.items()} for split in d}
result = out
"""


# ---------------------------------------------------------------------------------------------
# datasets


@pytest.mark.parametrize("streaming", [False, True], ids=["load", "streaming"])
def test_datasets_load_dataset_yaml_configs(fake_hub, client, endpoint, tmp_path, streaming):
    where, mirror, make_env = endpoint
    expected = {repo: expected_dataset(fake_hub, repo) for repo in ECO_REPOS}
    # the fake's own Parquet writer, checked against known values
    assert expected["eco/parquet"]["tables"]["train"][0] == {"id": 0, "word": "alpha-0", "value": -10.0}
    assert len(expected["eco/parquet"]["tables"]["train"]) == 423 and len(expected["eco/csv"]["numbers"]["train"]) == 2000
    assert any('"quote"' in row["text"] and "," in row["text"] for row in expected["eco/csv"]["tiny"]["train"])

    env, dns_log = datasets_env(make_env, tmp_path)
    res = client.run(LOAD, env, {"repos": list(ECO_REPOS), "configs": {r: list(expected[r]) for r in ECO_REPOS},
                                 "streaming": streaming}, timeout=600)
    out = res.result
    for repo in ECO_REPOS:
        assert out[repo]["config_names"] == list(expected[repo]), repo
        for name, splits in expected[repo].items():
            got = out[repo]["configs"][name]
            assert sorted(got) == sorted(splits), (repo, name)
            for split, rows in splits.items():
                assert got[split] == rows, (where, repo, name, split)
            if not streaming:
                for split in splits:
                    assert out[repo]["features"][name][split]["id"] == "int64", out[repo]["features"][name]
    # datasets asked the dataset viewer (T27) and got NXDOMAIN at once from the stand-in resolver
    host = urllib.parse.urlsplit(env["HF_ENDPOINT"]).hostname
    assert f"datasets-server.{host}" in dns_log.read_text().split(), "datasets did not look up the dataset viewer"

    if mirror is not None:
        if streaming:
            # streaming reads the data files with Range requests (HfFileSystem's, its own user agent)
            wait_until(lambda: any(line["status"] == 206 and line["path"].endswith(".parquet")
                                   for line in access_lines(mirror)), "the streamed Parquet reads (206) in the access log")
        wait_until(lambda: any(line["path"].startswith("/datasets/eco/parquet/") and line["path"].endswith("/dataset_infos.json")
                               for line in access_lines(mirror)), "the client's access-log lines")
        lines = [line for line in access_lines(mirror) if line["user_agent"].startswith("datasets/")]
        # no script, no standalone YAML, no legacy infos: each a HEAD answered 404 (EntryNotFound)
        for repo in ECO_REPOS:
            name = repo.split("/")[1]
            for missing in (f"{name}.py", ".huggingface.yaml", "dataset_infos.json"):
                asked = [line for line in lines if line["path"].startswith(f"/datasets/{repo}/resolve/")
                         and line["path"].endswith("/" + missing)]
                assert asked and all(line["status"] == 404 for line in asked), (repo, missing, asked)
        requests = fake_hub.requests()
        assert not any("xet-read-token" in r["path"] for r in requests)


# ---------------------------------------------------------------------------------------------
# HfFileSystem


FS_LISTING = """
from huggingface_hub import HfFileSystem
fs = HfFileSystem()
R = ARGS["root"]
out = {
  "ls_root": sorted(fs.ls(R, detail=True), key=lambda e: e["name"]),
  "ls_sub": sorted(fs.ls(R + "/csv", detail=False)),
  "glob_recursive": fs.glob(R + "/**/*.csv"),
  "glob_one_level": fs.glob(R + "/*/*.csv"),
  "glob_top": fs.glob(R + "/*.md"),
  "find": fs.find(R),
  "isdir": [fs.isdir(R + "/tiny"), fs.isdir(R + "/csv/train.csv")],
  "exists": [fs.exists(R + "/csv/test.csv"), fs.exists(R + "/nope.csv")],
}
fresh = HfFileSystem(skip_instance_cache=True)  # no dircache: info() lists the parent (tree)
out["info_lfs"] = fresh.info(R + "/" + ARGS["lfs"])
out["info_regular"] = fresh.info(R + "/README.md")
fresh = HfFileSystem(skip_instance_cache=True)  # expand_info: info() asks paths-info with expand
out["info_lfs_expanded"] = fresh.info(R + "/" + ARGS["lfs"], expand_info=True)
result = out
"""


def test_hffs_ls_glob_info(fake_hub, client, endpoint):
    where, mirror, make_env = endpoint
    repo, root = "eco/csv", "datasets/eco/csv"
    files = fake_hub.files(f"datasets/{repo}")
    res = client.run(FS_LISTING, make_env(), {"root": root, "lfs": LFS_CSV})
    out = res.result
    sha = fake_hub.sha(f"datasets/{repo}")

    top = {p.split("/")[0] for p in files}
    assert [e["name"] for e in out["ls_root"]] == sorted(f"{root}/{n}" for n in top)
    for entry in out["ls_root"]:
        rel = entry["name"][len(root) + 1:]
        if rel in files:
            meta = files[rel]
            assert entry["type"] == "file" and entry["size"] == meta["size"] and entry["blob_id"] == meta["oid"], entry
            assert entry["lfs"] == ({"size": meta["size"], "sha256": meta["sha256"], "pointer_size": meta["pointer_size"]}
                                    if meta["lfs"] else None), entry
        else:
            assert entry["type"] == "directory" and entry["size"] == 0 and entry["tree_id"], entry
    assert out["ls_sub"] == sorted(f"{root}/{p}" for p in files if p.startswith("csv/"))
    csvs = sorted(f"{root}/{p}" for p in files if p.endswith(".csv"))
    assert out["glob_recursive"] == csvs
    assert out["glob_one_level"] == csvs
    assert out["glob_top"] == [f"{root}/README.md"]
    assert out["find"] == sorted(f"{root}/{p}" for p in files)
    assert out["isdir"] == [True, False] and out["exists"] == [True, False]

    meta = files[LFS_CSV]
    for key in ("info_lfs", "info_lfs_expanded"):
        info = out[key]
        assert info["name"] == f"{root}/{LFS_CSV}" and info["type"] == "file", info
        assert info["size"] == meta["size"] == len(fake_hub.file(repo, LFS_CSV, repo_type="dataset"))
        assert info["blob_id"] == meta["oid"]
        assert info["lfs"] == {"size": meta["size"], "sha256": meta["sha256"], "pointer_size": meta["pointer_size"]}
    assert out["info_lfs_expanded"]["last_commit"]["oid"] == sha, out["info_lfs_expanded"]
    readme = files["README.md"]
    assert out["info_regular"]["size"] == readme["size"] and out["info_regular"]["blob_id"] == readme["oid"]
    assert out["info_regular"]["lfs"] is None

    if where == "mirror":
        # the mirror strips Xet: no xet_hash anywhere HfFileSystem looked
        assert all(e.get("xet_hash") is None for e in out["ls_root"] + [out["info_lfs"], out["info_lfs_expanded"]])
    else:
        assert out["info_lfs"]["xet_hash"], "the fake Hub lists xetHash for LFS files, like huggingface.co"


FS_READS = """
import hashlib
from huggingface_hub import HfFileSystem
fs = HfFileSystem()
out = {}
for path, ops in ARGS["ops"].items():
    got = out[path] = {}
    with fs.open(path, "rb", block_size=ARGS["block_size"]) as f:
        for name, seek, length in ops["seek_read"]:
            f.seek(seek)
            got[name] = [f.read(length).hex(), f.tell()]
    for name, offset, length, delimiter in ops["read_block"]:
        got[name] = fs.read_block(path, offset, length, delimiter=delimiter.encode() if delimiter else None).hex()
    for name, start, end in ops["cat_file"]:
        got[name] = fs.cat_file(path, start=start, end=end).hex()
    with fs.open(path, "rb", block_size=0) as f:  # the streaming file
        whole = f.read(ops["size"])
        # The connection is lost right at the end of the file: the stream reconnects at its position
        # with `Range: bytes=<size>-`, and reads the answer (416) as end of file.
        f.response.close()
        f.response = None
        at_eof = f.read()
        got["stream"] = [hashlib.sha256(whole).hexdigest(), len(whole), at_eof.hex(), f.loc]
result = out
"""


def test_hffs_ranged_reads_and_end_of_file(fake_hub, mirror, client, via_mirror):
    import fsspec.utils

    targets = {
        f"datasets/eco/csv/{LFS_CSV}": ("eco/csv", LFS_CSV),
        f"datasets/eco/jsonl/{REGULAR_JSONL}": ("eco/jsonl", REGULAR_JSONL),
    }
    ops, truth = {}, {}
    for fs_path, (repo, path) in targets.items():
        data = fake_hub.file(repo, path, repo_type="dataset")
        size = len(data)
        assert size > 2500, (path, size)  # big enough for the offsets below to mean something
        truth[fs_path] = data
        ops[fs_path] = {
            "size": size,
            "seek_read": [["middle", size // 3, 777], ["block_edge", 999, 3], ["tail", size - 10, 100],
                          ["at_eof", size, 5]],
            "read_block": [["block", size // 2, 1500, None], ["block_lines", 100, 300, "\n"],
                           ["block_past_eof", size - 50, 5000, None]],
            "cat_file": [["cat", 100, 1300], ["cat_last_20", -20, None], ["cat_past_eof", size - 7, size + 50]],
        }
    res = client.run(FS_READS, via_mirror(), {"ops": ops, "block_size": 1000})
    out = res.result
    for fs_path, data in truth.items():
        got, size = out[fs_path], len(data)
        for name, seek, length in ops[fs_path]["seek_read"]:
            assert bytes.fromhex(got[name][0]) == data[seek:seek + length], (fs_path, name)
            assert got[name][1] == min(seek + length, size), (fs_path, name)
        assert got["at_eof"][0] == ""
        for name, offset, length, delimiter in ops[fs_path]["read_block"]:
            want = fsspec.utils.read_block(io.BytesIO(data), offset, length, delimiter.encode() if delimiter else None)
            assert bytes.fromhex(got[name]) == want, (fs_path, name)
        assert bytes.fromhex(got["cat"]) == data[100:1300]
        assert bytes.fromhex(got["cat_last_20"]) == data[-20:]
        assert bytes.fromhex(got["cat_past_eof"]) == data[-7:]
        assert got["stream"] == [hashlib.sha256(data).hexdigest(), size, "", size], fs_path

    # what the mirror answered: ranges as 206, and 416 (bytes */size) at the end of the file
    for fs_path, (repo, path) in targets.items():
        size = len(truth[fs_path])
        url = f"/datasets/{repo}/resolve/main/{path}"
        client_lines = lambda: [line for line in access_lines(mirror) if line["path"] == url and "hf_hub/" in line["user_agent"]]
        wait_until(lambda: any(line["status"] == 416 for line in client_lines()), f"the client's 416 of {url} in the access log")
        statuses = {line["status"] for line in client_lines()}
        assert 206 in statuses and 416 in statuses, (url, statuses)
        r = mirror.request("GET", url, headers={"Range": f"bytes={size}-"})
        assert r.status == 416 and r.header("Content-Range") == f"bytes */{size}", r
        r = mirror.request("GET", url, headers={"Range": f"bytes={size - 5}-{size + 100}"})
        assert r.status == 206 and r.body == truth[fs_path][-5:], r
        assert r.header("Content-Range") == f"bytes {size - 5}-{size - 1}/{size}"


# ---------------------------------------------------------------------------------------------
# the hf CLI


def hf(client, args: list[str], env: dict) -> tuple[int, str, str]:
    proc = client.cli(hf_cli() + args, {**env, "NO_COLOR": "1"})
    return proc.returncode, proc.stdout, proc.stderr


SNAPSHOTS = """
from huggingface_hub import snapshot_download
result = [snapshot_download("org/model"), snapshot_download("eco/csv", repo_type="dataset")]
"""


def test_hf_cache_verify_after_snapshot(fake_hub, mirror, client, via_mirror):
    home = client.new_home()
    env = via_mirror(home=home)
    model_dir, dataset_dir = (Path(p) for p in client.run(SNAPSHOTS, env).result)
    model_files, dataset_files = fake_hub.files("org/model"), fake_hub.files("datasets/eco/csv")
    assert model_dir.name == fake_hub.sha("org/model") and dataset_dir.name == fake_hub.sha("datasets/eco/csv")

    strict = ["--fail-on-missing-files", "--fail-on-extra-files", "--format", "json"]
    rc, out, err = hf(client, ["cache", "verify", "org/model", *strict], env)
    assert rc == 0, (out, err)
    report = json.loads(out)
    assert report["checked"] == len(model_files) and Path(report["path"]) == model_dir, report
    rc, out, err = hf(client, ["cache", "verify", "eco/csv", "--repo-type", "dataset", *strict], env)
    assert rc == 0, (out, err)
    assert json.loads(out)["checked"] == len(dataset_files)
    # it compared with the remote tree, asked of the mirror
    wait_until(lambda: any(line["path"].startswith("/api/models/org/model/tree/") and "huggingface-cli/" in line["user_agent"]
                           for line in access_lines(mirror)), "verify's tree listing in the access log")

    # a changed regular file, a changed LFS file and a missing file are each caught
    for path in ("config.json", "model.safetensors"):
        blob = (model_dir / path).resolve()
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    (model_dir / "docs" / "b.md").unlink()
    rc, out, err = hf(client, ["cache", "verify", "org/model", "--fail-on-missing-files"], env)
    assert rc != 0, (out, err)
    text = out + err
    assert "config.json" in text and model_files["config.json"]["oid"] in text, text
    assert "model.safetensors" in text and model_files["model.safetensors"]["sha256"] in text, text
    assert "docs/b.md" in text, text


def test_hf_models_ls_recursive(fake_hub, mirror, client, via_mirror):
    env = via_mirror()
    files = fake_hub.files("org/model")
    state = fake_hub.repo_state("org/model")
    sha = state["refs"]["main"]
    dirs = state["commits"][sha]["dirs"]

    rc, out, err = hf(client, ["models", "ls", "org/model", "-R", "--format", "json"], env)
    assert rc == 0, (out, err)
    entries = {e["path"]: e for e in json.loads(out)}
    assert set(entries) == set(files) | set(dirs)
    for path, meta in files.items():
        e = entries[path]
        assert e["size"] == meta["size"] and e["blob_id"] == meta["oid"], e
        assert (e.get("lfs") or None) == ({"size": meta["size"], "sha256": meta["sha256"], "pointer_size": meta["pointer_size"]}
                                          if meta["lfs"] else None), e
        assert e["last_commit"]["oid"] == sha, e
        assert e["security"]["av_scan"]["status"] == "safe", e  # expanded fields, passed through
        assert not e.get("xet_hash"), e
    for path in dirs:
        assert entries[path]["tree_id"] and entries[path]["last_commit"]["oid"] == sha, entries[path]

    rc, out, err = hf(client, ["models", "ls", "org/model", "--format", "quiet"], env)
    assert rc == 0, (out, err)
    top_files = sorted(p for p in files if "/" not in p)
    top_dirs = sorted(d + "/" for d in dirs if "/" not in d)
    assert sorted(out.split("\n")[:-1]) == sorted(top_files + top_dirs), out

    rc, out, err = hf(client, ["datasets", "ls", "eco/parquet", "-R", "--format", "quiet"], env)
    assert rc == 0, (out, err)
    ds = fake_hub.repo_state("datasets/eco/parquet")
    ds_dirs = ds["commits"][ds["refs"]["main"]]["dirs"]
    assert sorted(out.split("\n")[:-1]) == sorted(list(fake_hub.files("datasets/eco/parquet")) + [d + "/" for d in ds_dirs])


@pytest.mark.parametrize("repo,repo_type,patterns", [
    ("org/model", "model", ["sub/*", "*.md", "*.safetensors"]),
    ("eco/parquet", "dataset", ["parquet/*"]),
])
def test_hf_download_include_local_dir(fake_hub, mirror, client, via_mirror, tmp_path, repo, repo_type, patterns):
    key = repo if repo_type == "model" else f"datasets/{repo}"
    files = fake_hub.files(key)
    want = sorted(p for p in files if any(fnmatch.fnmatch(p, pat) for pat in patterns))
    assert 1 < len(want) < len(files), want
    target = tmp_path / "local"
    args = ["download", repo, "--local-dir", str(target)]
    for pat in patterns:
        args += ["--include", pat]
    if repo_type != "model":
        args += ["--repo-type", repo_type]
    rc, out, err = hf(client, args, via_mirror())
    assert rc == 0, (out, err)
    assert cli_path(out) == target
    assert files_under(target) == {p: fake_hub.file(repo, p, repo_type=repo_type) for p in want}
    # and `hf cache verify --local-dir` agrees (the files left out are reported missing, not failed)
    rc, out, err = hf(client, ["cache", "verify", repo, "--repo-type", repo_type, "--local-dir", str(target),
                               "--format", "json"], via_mirror())
    assert rc == 0, (out, err)
    assert json.loads(out)["checked"] == len(want)
