#!/usr/bin/env python3
"""The blobs of item 7 (a node added and removed): the LFS shards of `rollout/blobs` (lib/fakehub.py).

  blobs.py fetch --hub URL --hosts NAME=URL,... [--through-each] --out FILE
      downloads every shard with a real huggingface_hub (hf_hub_download at the commit's sha, so no
      branch is revalidated, into a fresh cache each time), through the hosts in turn (shard i through
      host i mod H) or, with --through-each, every shard through every host; every byte is checked
      against the shard's sha256. Exit 1 on any failure; the JSON report lists them.
  blobs.py upstream --hub URL
      how often upstream was asked for the shards' bytes, from the fake Hub's request log: GETs of
      their signed CDN URLs and GETs of /resolve/ in the repo (the redirect a fill starts with).
      Prints {"cdn": N, "resolve": N, "total": N, "per_blob_max": N}.
  blobs.py etags --hub URL
      the shards' etags (their sha256), one a line.
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

REPO = "rollout/blobs"


def hub_state(hub: str) -> dict:
    with urllib.request.urlopen(f"{hub}/_fake/state", timeout=30) as response:
        return json.load(response)


def shards(hub: str) -> tuple[str, dict[str, dict]]:
    """The commit sha of main and {path: identity} of every LFS shard."""
    entry = hub_state(hub)["repos"][REPO]
    commit = entry["refs"]["main"]
    files = entry["commits"][commit]["files"]
    return commit, {path: identity for path, identity in sorted(files.items()) if identity["lfs"]}


def fetch(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.pop("HF_TOKEN", None)
    from huggingface_hub import hf_hub_download

    hosts = [tuple(item.split("=", 1)) for item in args.hosts.split(",") if item]
    commit, files = shards(args.hub)
    plan = []
    for index, path in enumerate(files):
        targets = hosts if args.through_each else [hosts[index % len(hosts)]]
        plan.extend((name, url, path) for name, url in targets)
    scratch = tempfile.mkdtemp(prefix="blobs-", dir=args.scratch)
    failures = []
    started = time.monotonic()
    try:
        for name, url, path in plan:
            cache = tempfile.mkdtemp(dir=scratch)
            try:
                local = hf_hub_download(REPO, path, revision=commit, cache_dir=cache, endpoint=url)
                with open(local, "rb") as handle:
                    data = handle.read()
                identity = files[path]
                if len(data) != identity["size"] or hashlib.sha256(data).hexdigest() != identity["sha256"]:
                    raise AssertionError(f"{len(data)} bytes that do not hash to {identity['sha256']}")
            except Exception as exception:  # every failure counts
                failures.append({"host": name, "path": path, "error": f"{type(exception).__name__}: {exception}"[:1000]})
                print(f"blobs: {path} through {name} failed: {failures[-1]['error'][:300]}", file=sys.stderr, flush=True)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"downloads": len(plan), "failed": len(failures), "blobs": len(files), "failures": failures,
              "seconds": round(time.monotonic() - started, 1)}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle)
    print(f"blobs: {len(plan)} downloads of {len(files)} blobs through {len(hosts)} host(s), {len(failures)} failed, "
          f"every byte checked ({report['seconds']} s)", flush=True)
    return 0 if not failures else 1


def upstream(args: argparse.Namespace) -> int:
    _, files = shards(args.hub)
    etags = {identity["sha256"] for identity in files.values()}
    with urllib.request.urlopen(f"{args.hub}/_fake/requests", timeout=30) as response:
        log = json.load(response)
    entries = log["requests"] if isinstance(log, dict) else log
    cdn = 0
    resolve = 0
    per_blob: dict[str, int] = {}
    for entry in entries:
        if entry.get("method") != "GET":
            continue
        path = entry.get("path", "")
        if entry.get("server") == "cdn":
            sha = path.rsplit("/", 1)[-1]
            if sha in etags:
                cdn += 1
                per_blob[sha] = per_blob.get(sha, 0) + 1
        elif f"/{REPO}/resolve/" in path:
            resolve += 1
    print(json.dumps({"cdn": cdn, "resolve": resolve, "total": cdn + resolve, "per_blob_max": max(per_blob.values(), default=0)}))
    return 0


def etags(args: argparse.Namespace) -> int:
    _, files = shards(args.hub)
    for identity in files.values():
        print(identity["sha256"])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("fetch")
    command.add_argument("--hub", required=True)
    command.add_argument("--hosts", required=True)
    command.add_argument("--through-each", action="store_true")
    command.add_argument("--scratch", default=None)
    command.add_argument("--out", required=True)
    command.set_defaults(run=fetch)
    for name, run in (("upstream", upstream), ("etags", etags)):
        command = commands.add_parser(name)
        command.add_argument("--hub", required=True)
        command.set_defaults(run=run)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
