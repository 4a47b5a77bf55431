#!/usr/bin/env python3
"""A bounded client loop for the rollout test: real huggingface_hub requests through every host.

Request i goes to host i mod H; it is a HEAD (huggingface_hub.get_hf_file_metadata) or a GET
(huggingface_hub.hf_hub_download into a fresh cache, so a failed request can never be answered from
a local copy) of one of a few small and LFS files of the fake Hub. Every answer is checked against
the fake Hub's own identities: a HEAD's etag and size, every byte of a GET by its hash (git blob
sha1 for regular files, sha256 for LFS files).

The loop stops by itself after --count requests, or earlier when --stop-file exists. It writes a
JSON report: totals, failures (with the error), and every request's host, kind and start/end time
(time.time_ns(), the same clock the hosts' rollout logs use).

Usage: client_loop.py --hub URL --hosts NAME=URL,… --count N [--pause S] [--stop-file P] --out FILE
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.pop("HF_TOKEN", None)

from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url  # noqa: E402

# (repo, path): small regular files and an LFS file of the fake Hub, all on branch main.
FILES = [
    ("org/model", "config.json"),
    ("org/model", "model.safetensors"),
    ("org/model", "README.md"),
    ("org/model", "sub/dir/file.txt"),
    ("org/tiny-tokenizer", "tokenizer.json"),
]
REVISION = "main"


def expected_identities(hub: str) -> dict[tuple[str, str], dict]:
    """Each file's size, etag and hash as the fake Hub itself states them."""
    with urllib.request.urlopen(f"{hub}/_fake/state", timeout=30) as response:
        state = json.load(response)
    identities = {}
    for repo, path in FILES:
        entry = next(value for value in state["repos"].values() if value["id"] == repo and value["type"] == "model")
        commit = entry["refs"][REVISION]
        identities[(repo, path)] = entry["commits"][commit]["files"][path]
    return identities


def content_matches(data: bytes, identity: dict) -> bool:
    if len(data) != identity["size"]:
        return False
    if identity["lfs"]:
        return hashlib.sha256(data).hexdigest() == identity["sha256"]
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return blob == identity["oid"]


def one_request(kind: str, host_url: str, repo: str, path: str, identity: dict, scratch: str) -> None:
    """Raises on any failure: an error from the client, a wrong etag, size or byte."""
    if kind == "HEAD":
        metadata = get_hf_file_metadata(hf_hub_url(repo, path, revision=REVISION, endpoint=host_url), endpoint=host_url)
        if metadata.etag != identity["etag"] or metadata.size != identity["size"]:
            raise AssertionError(f"HEAD answered etag {metadata.etag} size {metadata.size}, expected {identity['etag']} {identity['size']}")
        return
    cache = tempfile.mkdtemp(dir=scratch)
    try:
        local = hf_hub_download(repo, path, revision=REVISION, cache_dir=cache, endpoint=host_url)
        with open(local, "rb") as handle:
            data = handle.read()
        if not content_matches(data, identity):
            raise AssertionError(f"GET returned {len(data)} bytes that do not hash to the file's identity")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hub", required=True, help="the fake Hub (for the files' identities)")
    parser.add_argument("--hosts", required=True, help="NAME=URL,… of the nodes")
    parser.add_argument("--count", type=int, required=True, help="the most requests made")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between requests")
    parser.add_argument("--stop-file", default=None, help="stop early once this file exists")
    parser.add_argument("--scratch", default=None, help="directory for the downloads (default: a temporary one)")
    parser.add_argument("--out", required=True, help="the JSON report")
    args = parser.parse_args()

    hosts = [tuple(item.split("=", 1)) for item in args.hosts.split(",") if item]
    identities = expected_identities(args.hub)
    scratch = tempfile.mkdtemp(prefix="client-loop-", dir=args.scratch)
    records = []
    failures = []
    try:
        for index in range(args.count):
            if args.stop_file and os.path.exists(args.stop_file):
                break
            name, url = hosts[index % len(hosts)]
            round_number = index // len(hosts)
            repo, path = FILES[round_number % len(FILES)]
            kind = "HEAD" if (round_number // len(FILES)) % 2 == 0 else "GET"
            started = time.time_ns()
            error = None
            try:
                one_request(kind, url, repo, path, identities[(repo, path)], scratch)
            except Exception as exception:  # every failure counts, whatever its kind
                error = f"{type(exception).__name__}: {exception}"
            ended = time.time_ns()
            record = {"i": index, "host": name, "kind": kind, "repo": repo, "path": path, "start": started, "end": ended, "ok": error is None}
            records.append(record)
            if error is not None:
                failures.append({**record, "error": error[:2000]})
                print(f"client_loop: request {index} {kind} {repo}/{path} via {name} failed: {error[:300]}", file=sys.stderr, flush=True)
            if args.pause:
                time.sleep(args.pause)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "requests": len(records),
        "failed": len(failures),
        "by_kind": {kind: sum(1 for r in records if r["kind"] == kind) for kind in ("HEAD", "GET")},
        "by_host": {name: sum(1 for r in records if r["host"] == name) for name, _ in hosts},
        "lfs_gets_ok": sum(1 for r in records if r["ok"] and r["kind"] == "GET" and identities[(r["repo"], r["path"])]["lfs"]),
        "failures": failures,
        "records": records,
    }
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle)
    print(f"client_loop: {report['requests']} requests, {report['failed']} failed ({report['by_kind']})", flush=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
