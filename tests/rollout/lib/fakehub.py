#!/usr/bin/env python3
"""The rollout test's fake Hub: tests/fakehub/fake_hub.py with one more public repository.

`rollout/blobs` (a model repo, branch main) holds SHARDS LFS files shard-NN.safetensors of SIZE
bytes each, all different: enough blobs that placement gives a node added to the cluster a share of
them (item 7 of tests/rollout/run.sh downloads them before adding a node, then checks that the new
node received some from the other nodes and that upstream was never asked for them again). The
fake Hub itself is unchanged; this only adds content before it starts.

Usage: fakehub.py [--shards N] [--shard-size BYTES] FAKE_HUB_ARGS...
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fakehub"))

import fake_hub  # noqa: E402

REPO = "rollout/blobs"


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--shards", type=int, default=24)
    parser.add_argument("--shard-size", type=int, default=256 * 1024)
    ours, rest = parser.parse_known_args()
    original = fake_hub.HubData._build

    def build(self, big_size, big_dir):
        original(self, big_size, big_dir)
        repo = self.add(fake_hub.Repo("model", REPO, tags=["safetensors"], extra={"library_name": "transformers"}))
        files = {".gitattributes": fake_hub.FileEntry(".gitattributes", fake_hub.GITATTRIBUTES)}
        for index in range(ours.shards):
            path = f"shard-{index:02d}.safetensors"
            files[path] = fake_hub.FileEntry(path, fake_hub.safetensors_bytes(f"{REPO}:{path}", ours.shard_size), lfs=True)
        commit = repo.add_commit("main", files, "Add shards", "2024-03-01T00:00:00.000Z")
        repo.branches = {"main": commit.sha}

    fake_hub.HubData._build = build
    return fake_hub.main(rest)


if __name__ == "__main__":
    sys.exit(main())
