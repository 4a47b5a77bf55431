#!/usr/bin/env python3
"""A faithful fake of the Hugging Face Hub, for tests. Python standard library only.

It speaks the HTTP contract in hub-api.md (routes §1, /resolve/ §2, Xet signals §3,
repo info §4, tree/paths-info/refs/listings §5, errors §7, identities §8) the way the
real Hub does, including the parts a mirror must undo: LFS files answer 302 to a
"CDN" on another loopback host name, with Xet headers and `xetHash` in tree JSON.

Usage:
    python3 tests/fakehub/fake_hub.py [--host 127.0.0.1] [--port 0]
        [--cdn-host 127.0.0.2] [--cdn-port 0] [--page-size 3]
        [--big-size BYTES] [--big-dir DIR] [--verbose]

When both listeners are up it prints one line and flushes:
    fakehub http://HOST:PORT cdn http://CDNHOST:CDNPORT

Tokens: `hf_valid_token` (user alice, sees everything), `hf_other_token` (user bob,
valid but without access to org/private and org/gated). Any other token counts as
"authenticated without access" for repo visibility and is rejected by whoami.

Control endpoints (on the hub listener, never logged):
    GET  /_fake/requests                 every request seen since the last reset
    GET  /_fake/bytes                    file-body bytes sent since the last reset: {"hub": N, "cdn": N}
    POST /_fake/reset                    clears the request log and the byte counters (nothing else)
    POST /_fake/move-branch?repo=&branch=[&type=]  moves the branch to its prepared commit
    POST /_fake/down?on=1|0              every hub and CDN request answers 503
    POST /_fake/rate-limit?on=1|0        every hub request answers 429 with Retry-After and RateLimit fields
    POST /_fake/throttle?bytes_per_sec=N throttles CDN bodies (0 = off)
    POST /_fake/corrupt?on=1|0      the CDN flips the first byte of every body it sends
    GET  /_fake/state                    repos, refs, commits and per-file identities
    GET  /_fake/file?repo=&type=&rev=&path=  raw bytes of a file at a revision
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import mimetypes
import os
import random
import re
import signal
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VALID_TOKEN = "hf_valid_token"
OTHER_TOKEN = "hf_other_token"
DEAD_CAS_URL = "http://127.0.0.1:9"  # discard port: nothing listens, a Xet client fails
CDN_SIGNING_SECRET = b"fake-cdn-secret"
CDN_EXPIRES = "4102444800"  # 2100-01-01
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_SEGMENT = {"models": "model", "datasets": "dataset", "spaces": "space"}
# sub-routes of /api/{t}s/{repo}/…; used to tell a one-segment repo id from a two-segment one
API_SUBROUTES = {"revision", "tree", "paths-info", "refs", "xet-read-token", "commits", "discussions"}
RE_SHA = re.compile(r"^[0-9a-f]{40}$")
RE_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")
TRUE_WORDS = {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------------------------
# identities (hub-api §8)


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return sha1_hex(b"blob " + str(len(data)).encode() + b"\0" + data)


def commit_sha(label: str) -> str:
    """Stable lowercase 40-hex commit id for a label."""
    return sha1_hex(b"fakehub-commit:" + label.encode())


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def parse_bool(value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    return value.strip().lower() in TRUE_WORDS


def prng_bytes(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def safetensors_bytes(seed: str, payload_size: int) -> bytes:
    """A valid safetensors file: one U8 tensor of pseudo-random bytes."""
    header = {
        "__metadata__": {"format": "pt"},
        "weight": {"dtype": "U8", "shape": [payload_size], "data_offsets": [0, payload_size]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + prng_bytes(seed, payload_size)


# ---------------------------------------------------------------------------------------------
# content model


class FileEntry:
    """One file at one commit. Bytes live in memory, or on disk for the big benchmark blob."""

    def __init__(self, path: str, data: bytes | None = None, lfs: bool = False,
                 disk_path: str | None = None, size: int | None = None, sha256: str | None = None):
        self.path = path
        self.data = data
        self.disk_path = disk_path
        self.lfs = lfs
        if data is not None:
            self.size = len(data)
            self.sha256 = sha256_hex(data) if lfs else None
        else:
            assert disk_path is not None and size is not None and sha256 is not None and lfs
            self.size = size
            self.sha256 = sha256
        if lfs:
            self.pointer = lfs_pointer(self.sha256, self.size)
            self.oid = git_blob_sha1(self.pointer)  # tree oid = sibling blobId = sha1 of the pointer
            self.etag = self.sha256
            self.xet_hash = sha256_hex(b"xet:" + self.sha256.encode())
        else:
            self.pointer = None
            self.oid = git_blob_sha1(data)
            self.etag = self.oid
            self.xet_hash = None

    def read(self, start: int, end_inclusive: int) -> bytes:
        if self.data is not None:
            return self.data[start:end_inclusive + 1]
        with open(self.disk_path, "rb") as f:
            f.seek(start)
            return f.read(end_inclusive + 1 - start)

    def content_type(self) -> str:
        name = self.path.rsplit("/", 1)[-1]
        if name.endswith(".jsonl"):
            guessed = "text/plain"
        elif self.lfs or name.endswith((".safetensors", ".bin", ".parquet")):
            guessed = "application/octet-stream"
        else:
            guessed = mimetypes.guess_type(name)[0] or "text/plain"
        if guessed.startswith("text/") or guessed == "application/json":
            guessed += "; charset=utf-8"
        return guessed


class Commit:
    def __init__(self, sha: str, files: dict[str, FileEntry], title: str, date: str, parent: str | None):
        self.sha = sha
        self.files = files
        self.title = title
        self.date = date
        self.parent = parent
        self.dirs: set[str] = set()
        for path in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                self.dirs.add("/".join(parts[:i]))
        self._tree_oids: dict[str, str] = {}

    def tree_oid(self, directory: str) -> str:
        """Deterministic stand-in for a git tree sha1 (content-dependent)."""
        if directory not in self._tree_oids:
            prefix = directory + "/"
            lines = sorted(f"{p}:{f.oid}" for p, f in self.files.items() if p.startswith(prefix))
            self._tree_oids[directory] = sha1_hex(("tree\n" + "\n".join(lines)).encode())
        return self._tree_oids[directory]


class Repo:
    def __init__(self, repo_type: str, repo_id: str, *, private: bool = False, gated: str | bool = False,
                 tags: list[str] | None = None, extra: dict | None = None,
                 created_at: str = "2023-01-02T03:04:05.000Z"):
        self.type = repo_type
        self.id = repo_id
        self.private = private
        self.gated = gated
        self.model_tags = tags or []
        self.extra = extra or {}
        self.created_at = created_at
        self.commits: dict[str, Commit] = {}   # published commits, reachable by sha
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.prs: dict[str, str] = {}          # "refs/pr/1" -> sha
        self.prepared: dict[str, Commit] = {}  # branch -> commit the move-branch switch publishes

    @property
    def key(self) -> str:
        return URL_PREFIX[self.type] + self.id

    def add_commit(self, label: str, files: dict[str, FileEntry], title: str, date: str,
                   parent: Commit | None = None, publish: bool = True) -> Commit:
        commit = Commit(commit_sha(f"{self.key}@{label}"), files, title, date, parent.sha if parent else None)
        if publish:
            self.commits[commit.sha] = commit
        return commit

    def resolve(self, rev: str) -> Commit | None:
        for table, prefix in ((self.branches, "refs/heads/"), (self.tags, "refs/tags/")):
            name = rev[len(prefix):] if rev.startswith(prefix) else rev
            if name in table:
                return self.commits[table[name]]
        if rev in self.prs:
            return self.commits[self.prs[rev]]
        if RE_SHA.match(rev):
            return self.commits.get(rev)
        if RE_SHORT_SHA.match(rev):
            matches = [c for sha, c in self.commits.items() if sha.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        return None

    def all_commits(self) -> list[Commit]:
        return list(self.commits.values()) + [c for c in self.prepared.values() if c.sha not in self.commits]


GITATTRIBUTES = b"""*.7z filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.csv filter=lfs diff=lfs merge=lfs -text
"""

WEIRD_NAME = "we ird#name?+\u00e9.txt"


def bert_config(marker: str, **extra) -> bytes:
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "max_position_embeddings": 64,
        "vocab_size": 100,
        "fake_revision": marker,
    }
    config.update(extra)
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def tiny_tokenizer_json() -> bytes:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words = ["hello", "world", "mirror", "hub", "the", "a", "fake", "test", "tokenizer", "cache"]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, tok in enumerate(specials)
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }
    return (json.dumps(tokenizer, indent=2) + "\n").encode()


def build_big_file(size: int, big_dir: str) -> tuple[str, str]:
    """Generates the benchmark blob once (deterministic PRNG); returns (path, sha256)."""
    os.makedirs(big_dir, exist_ok=True)
    path = os.path.join(big_dir, f"big-{size}.bin")
    sidecar = path + ".sha256"
    if os.path.exists(path) and os.path.getsize(path) == size and os.path.exists(sidecar):
        with open(sidecar) as f:
            digest = f.read().strip()
        if re.fullmatch(r"[0-9a-f]{64}", digest):
            return path, digest
    rng = random.Random(f"bench/big:{size}")
    hasher = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=big_dir, prefix=".big-", suffix=".tmp")
    chunk = 8 << 20
    with os.fdopen(fd, "wb") as f:
        remaining = size
        while remaining > 0:
            block = rng.randbytes(min(chunk, remaining))
            hasher.update(block)
            f.write(block)
            remaining -= len(block)
    digest = hasher.hexdigest()
    os.replace(tmp, path)
    fd, tmp = tempfile.mkstemp(dir=big_dir, prefix=".sha-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(digest + "\n")
    os.replace(tmp, sidecar)
    return path, digest


# --- a minimal Parquet writer (standard library only) ------------------------------------------
# One row group, one uncompressed PLAIN data page (v1) per column, every column REQUIRED, so no
# definition or repetition levels. Enough for pyarrow (and so `datasets`) to read it exactly.

_T_I32, _T_I64, _T_BINARY, _T_LIST, _T_STRUCT = 5, 6, 8, 9, 12
PARQUET_TYPES = {"int64": 2, "double": 5, "string": 6}  # parquet physical types INT64, DOUBLE, BYTE_ARRAY


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


class _Thrift:
    """Thrift compact protocol: a struct is a list of (field id, type, value) written in id order."""

    @staticmethod
    def struct(fields: list[tuple[int, int, object]]) -> bytes:
        out, last = bytearray(), 0
        for fid, ftype, value in fields:
            if value is None:
                continue
            delta = fid - last
            out += bytes([(delta << 4) | ftype]) if 0 < delta <= 15 else bytes([ftype]) + _zigzag(fid)
            out += _Thrift.value(ftype, value)
            last = fid
        return bytes(out + b"\x00")

    @staticmethod
    def value(ftype: int, value) -> bytes:
        if ftype in (_T_I32, _T_I64):
            return _zigzag(value)
        if ftype == _T_BINARY:
            raw = value.encode() if isinstance(value, str) else value
            return _varint(len(raw)) + raw
        if ftype == _T_STRUCT:
            return value  # already encoded
        if ftype == _T_LIST:
            elem_type, items = value
            head = bytes([(len(items) << 4) | elem_type]) if len(items) < 15 else bytes([0xF0 | elem_type]) + _varint(len(items))
            return head + b"".join(_Thrift.value(elem_type, item) for item in items)
        raise ValueError(ftype)


def parquet_bytes(columns: list[tuple[str, str, list]]) -> bytes:
    """columns: [(name, "int64" | "double" | "string", values)], all of the same length."""
    num_rows = len(columns[0][2])
    out = bytearray(b"PAR1")
    chunks, schema = [], [_Thrift.struct([(4, _T_BINARY, "schema"), (5, _T_I32, len(columns))])]
    for name, kind, values in columns:
        assert len(values) == num_rows
        if kind == "int64":
            data = b"".join(int(v).to_bytes(8, "little", signed=True) for v in values)
        elif kind == "double":
            data = b"".join(struct.pack("<d", float(v)) for v in values)
        else:
            data = b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)
        page_header = _Thrift.struct([
            (1, _T_I32, 0),  # DATA_PAGE
            (2, _T_I32, len(data)),
            (3, _T_I32, len(data)),
            (5, _T_STRUCT, _Thrift.struct([(1, _T_I32, num_rows), (2, _T_I32, 0), (3, _T_I32, 3), (4, _T_I32, 3)])),
        ])
        offset = len(out)
        out += page_header + data
        size = len(page_header) + len(data)
        ptype = PARQUET_TYPES[kind]
        meta = _Thrift.struct([
            (1, _T_I32, ptype),
            (2, _T_LIST, (_T_I32, [0])),       # PLAIN
            (3, _T_LIST, (_T_BINARY, [name])),
            (4, _T_I32, 0),                    # UNCOMPRESSED
            (5, _T_I64, num_rows),
            (6, _T_I64, size),
            (7, _T_I64, size),
            (9, _T_I64, offset),
        ])
        chunks.append((_Thrift.struct([(2, _T_I64, offset), (3, _T_STRUCT, meta)]), size))
        schema.append(_Thrift.struct([
            (1, _T_I32, ptype),
            (3, _T_I32, 0),  # REQUIRED
            (4, _T_BINARY, name),
            (6, _T_I32, 0 if kind == "string" else None),  # converted type UTF8
            (10, _T_STRUCT, _Thrift.struct([(1, _T_STRUCT, _Thrift.struct([]))]) if kind == "string" else None),
        ]))
    row_group = _Thrift.struct([
        (1, _T_LIST, (_T_STRUCT, [c for c, _ in chunks])),
        (2, _T_I64, sum(size for _, size in chunks)),
        (3, _T_I64, num_rows),
    ])
    footer = _Thrift.struct([
        (1, _T_I32, 1),
        (2, _T_LIST, (_T_STRUCT, schema)),
        (3, _T_I64, num_rows),
        (4, _T_LIST, (_T_STRUCT, [row_group])),
        (6, _T_BINARY, "fakehub parquet writer"),
    ])
    return bytes(out + footer + len(footer).to_bytes(4, "little") + b"PAR1")


def eco_card(repo: str, configs: str, text: str) -> bytes:
    return f"---\nlicense: mit\nconfigs:\n{configs}---\n# {repo}\n\n{text}\n".encode()


def eco_dataset_files() -> dict[str, list[FileEntry]]:
    """The three `eco/*` dataset repos, each with a YAML `configs:` block of two configurations (the
    `datasets` library picks one builder per repo, so each repo holds one format). Deterministic."""
    rng = random.Random("eco")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "mirror", "hub", "caf\u00e9"]

    def csv_file(path: str, first: int, count: int) -> FileEntry:
        lines = ["id,text,score"]
        for i in range(first, first + count):
            text = " ".join(rng.choice(words) for _ in range(1 + i % 5))
            if i % 17 == 3:
                text = f'"{text}, with a comma and a ""quote"""'
            lines.append(f"{i},{text},{(i * 37 % 1000) / 8}")
        return FileEntry(path, ("\n".join(lines) + "\n").encode(), lfs=True)  # *.csv is LFS

    def jsonl_file(path: str, first: int, count: int) -> FileEntry:
        rows = [{"id": i, "text": f"line {i}: " + " ".join(rng.choice(words) for _ in range(3)),
                 "tags": [words[i % len(words)], words[(i * 7) % len(words)]]} for i in range(first, first + count)]
        return FileEntry(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())

    def parquet_file(path: str, first: int, count: int) -> FileEntry:
        ids = list(range(first, first + count))
        return FileEntry(path, parquet_bytes([
            ("id", "int64", ids),
            ("word", "string", [words[(i * 3) % len(words)] + f"-{i}" for i in ids]),
            ("value", "double", [i / 4 - 10 for i in ids]),
        ]), lfs=True)  # *.parquet is LFS

    notes = FileEntry("extras/notes.txt", b"not part of any configuration\n")
    return {
        "eco/csv": [
            FileEntry(".gitattributes", GITATTRIBUTES),
            FileEntry("README.md", eco_card("eco/csv", (
                "- config_name: numbers\n  data_files:\n  - split: train\n    path: csv/train.csv\n"
                "  - split: test\n    path: csv/test.csv\n  default: true\n"
                "- config_name: tiny\n  data_files: tiny/*.csv\n"), "CSV files (LFS) in two configurations.")),
            csv_file("csv/train.csv", 0, 2000),
            csv_file("csv/test.csv", 2000, 25),
            csv_file("tiny/part-a.csv", 5000, 3),
            csv_file("tiny/part-b.csv", 5003, 4),
            notes,
        ],
        "eco/jsonl": [
            FileEntry(".gitattributes", GITATTRIBUTES),
            FileEntry("README.md", eco_card("eco/jsonl", (
                "- config_name: lines\n  data_files:\n  - split: train\n    path: jsonl/train-*.jsonl\n"
                "  - split: validation\n    path: jsonl/validation.jsonl\n  default: true\n"
                "- config_name: other\n  data_files:\n  - split: train\n    path: other/*.jsonl\n"),
                "JSON Lines files (regular git files) in two configurations.")),
            jsonl_file("jsonl/train-00000-of-00002.jsonl", 0, 40),
            jsonl_file("jsonl/train-00001-of-00002.jsonl", 40, 35),
            jsonl_file("jsonl/validation.jsonl", 1000, 12),
            jsonl_file("other/more.jsonl", 3000, 5),
            notes,
        ],
        "eco/parquet": [
            FileEntry(".gitattributes", GITATTRIBUTES),
            FileEntry("README.md", eco_card("eco/parquet", (
                "- config_name: tables\n  data_files:\n  - split: train\n    path: parquet/train-*.parquet\n"
                "  default: true\n"
                "- config_name: small\n  data_files:\n  - split: train\n    path: small/*.parquet\n"),
                "Parquet files (LFS) in two configurations.")),
            parquet_file("parquet/train-00000.parquet", 0, 300),
            parquet_file("parquet/train-00001.parquet", 300, 123),
            parquet_file("small/only.parquet", 7000, 6),
            notes,
        ],
    }


class HubData:
    """All repos of the fake. Mutations (move-branch) happen under `lock`."""

    def __init__(self, big_size: int = 0, big_dir: str | None = None):
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.renamed: dict[tuple[str, str], str] = {("model", "old-org/renamed"): "org/model"}
        self._build(big_size, big_dir)
        self.lfs_index: dict[str, FileEntry] = {}
        for repo in self.repos.values():
            for commit in repo.all_commits():
                for entry in commit.files.values():
                    if entry.lfs:
                        self.lfs_index[entry.sha256] = entry

    def add(self, repo: Repo) -> Repo:
        self.repos[(repo.type, repo.id)] = repo
        return repo

    def get(self, repo_type: str, repo_id: str) -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def _build(self, big_size: int, big_dir: str | None) -> None:
        def files(*entries: FileEntry) -> dict[str, FileEntry]:
            return {e.path: e for e in entries}

        def text(path: str, content: str) -> FileEntry:
            return FileEntry(path, content.encode())

        # --- org/model -------------------------------------------------------------------------
        model = self.add(Repo("model", "org/model", tags=["transformers", "safetensors", "bert"],
                              extra={"library_name": "transformers", "pipeline_tag": "feature-extraction"}))
        weights = FileEntry("model.safetensors", safetensors_bytes("org/model:model.safetensors", 3 * 1024 * 1024), lfs=True)
        v1_files = files(
            FileEntry(".gitattributes", GITATTRIBUTES),
            FileEntry("config.json", bert_config("v1.0")),
            weights,
            text("README.md", "---\nlicense: mit\n---\n# org/model\n\nA fake model (v1.0).\n"),
        )
        v1 = model.add_commit("v1.0", v1_files, "Initial commit", "2024-01-01T10:00:00.000Z")
        main_files = dict(v1_files)
        main_files.update(files(
            FileEntry("config.json", bert_config("main-1")),
            text("README.md", "---\nlicense: mit\n---\n# org/model\n\nA fake model.\n"),
            text("sub/dir/file.txt", "a file in a sub directory\n"),
            text("sub/dir/deeper/leaf.txt", "leaf\n"),
            text("sub/other.txt", "other file\n"),
            text("docs/a.md", "# a\n"),
            text("docs/b.md", "# b\n"),
            text("docs/c.md", "# c\n"),
            text(WEIRD_NAME, "file with spaces, #, ?, + and a non-ASCII letter\n"),
        ))
        main1 = model.add_commit("main-1", main_files, "Add docs and sub dirs", "2024-01-02T03:04:05.000Z", v1)
        feature_files = dict(main_files)
        feature_files.update(files(text("feature.txt", "only on feature/x\n")))
        feature = model.add_commit("feature/x", feature_files, "Add feature.txt", "2024-01-03T00:00:00.000Z", main1)
        pr_files = dict(main_files)
        pr_files.update(files(FileEntry("extra.safetensors", safetensors_bytes("org/model:pr1:extra", 200 * 1024), lfs=True)))
        pr1 = model.add_commit("refs/pr/1", pr_files, "Upload extra.safetensors", "2024-01-04T00:00:00.000Z", main1)
        main2_files = dict(main_files)
        main2_files.update(files(
            FileEntry("config.json", bert_config("main-2", hidden_size=48, num_attention_heads=3)),
            text("new_file.txt", "added by the second commit on main\n"),
        ))
        main2 = model.add_commit("main-2", main2_files, "Update config.json", "2024-02-01T00:00:00.000Z", main1, publish=False)
        model.branches = {"main": main1.sha, "feature/x": feature.sha}
        model.tags = {"v1.0": v1.sha}
        model.prs = {"refs/pr/1": pr1.sha}
        model.prepared = {"main": main2}

        # --- org/tiny-tokenizer ------------------------------------------------------------------
        tok = self.add(Repo("model", "org/tiny-tokenizer", tags=["transformers"], extra={"library_name": "transformers"}))
        tok_files = files(
            FileEntry(".gitattributes", GITATTRIBUTES),
            FileEntry("config.json", bert_config("tiny-tokenizer", vocab_size=14)),
            FileEntry("tokenizer.json", tiny_tokenizer_json()),
            FileEntry("tokenizer_config.json", (json.dumps({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "model_max_length": 64,
            }, indent=2) + "\n").encode()),
        )
        c = tok.add_commit("main", tok_files, "Add tokenizer", "2024-01-05T00:00:00.000Z")
        tok.branches = {"main": c.sha}

        # --- datasets/org/dataset ----------------------------------------------------------------
        ds = self.add(Repo("dataset", "org/dataset", tags=["format:csv", "size_categories:n<1K"]))
        rng = random.Random("org/dataset")
        csv_rows = ["id,text,label"] + [f"{i},row {i} {rng.randrange(10**9)},{i % 2}" for i in range(3000)]
        ds_files = files(
            FileEntry(".gitattributes", GITATTRIBUTES),
            text("README.md", "---\nlicense: mit\n---\n# org/dataset\n"),
            FileEntry("data/train.csv", ("\n".join(csv_rows) + "\n").encode(), lfs=True),
            text("data/test.jsonl", "".join(json.dumps({"id": i, "text": f"test {i}"}) + "\n" for i in range(20))),
        )
        c = ds.add_commit("main", ds_files, "Add data", "2024-01-06T00:00:00.000Z")
        ds.branches = {"main": c.sha}

        # --- gpt2 (legacy one-segment id) --------------------------------------------------------
        gpt2 = self.add(Repo("model", "gpt2", tags=["transformers", "gpt2"], extra={"library_name": "transformers",
                                                                                "pipeline_tag": "text-generation"}))
        gpt2_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_head": 2,
                       "n_layer": 2, "n_positions": 64, "vocab_size": 100}
        c = gpt2.add_commit("main", files(
            FileEntry(".gitattributes", GITATTRIBUTES),
            FileEntry("config.json", (json.dumps(gpt2_config, indent=2) + "\n").encode()),
            FileEntry("model.safetensors", safetensors_bytes("gpt2:model.safetensors", 64 * 1024), lfs=True),
        ), "Initial commit", "2024-01-07T00:00:00.000Z")
        gpt2.branches = {"main": c.sha}

        # --- org/private -------------------------------------------------------------------------
        private = self.add(Repo("model", "org/private", private=True, tags=["transformers"]))
        c = private.add_commit("main", files(
            FileEntry(".gitattributes", GITATTRIBUTES),
            FileEntry("config.json", bert_config("private")),
            FileEntry("secret.bin", prng_bytes("org/private:secret.bin", 100 * 1024), lfs=True),
        ), "Initial commit", "2024-01-08T00:00:00.000Z")
        private.branches = {"main": c.sha}

        # --- org/gated ---------------------------------------------------------------------------
        gated = self.add(Repo("model", "org/gated", gated="auto", tags=["transformers"]))
        c = gated.add_commit("main", files(
            FileEntry(".gitattributes", GITATTRIBUTES),
            FileEntry("config.json", bert_config("gated")),
            FileEntry("model.safetensors", safetensors_bytes("org/gated:model.safetensors", 100 * 1024), lfs=True),
        ), "Initial commit", "2024-01-09T00:00:00.000Z")
        gated.branches = {"main": c.sha}

        # --- spaces/org/space --------------------------------------------------------------------
        space = self.add(Repo("space", "org/space", tags=["gradio"], extra={"sdk": "gradio"}))
        c = space.add_commit("main", files(
            FileEntry(".gitattributes", GITATTRIBUTES),
            text("README.md", "---\ntitle: Space\nsdk: gradio\napp_file: app.py\n---\n# org/space\n"),
            text("app.py", "import gradio as gr\n\ngr.Interface(lambda x: x, 'text', 'text').launch()\n"),
        ), "Initial commit", "2024-01-10T00:00:00.000Z")
        space.branches = {"main": c.sha}

        # --- datasets/eco/{csv,jsonl,parquet}: the `datasets` library's YAML `configs:` and HfFileSystem ---
        # Their own namespace, so the `org` listings stay as they were.
        for n, (repo_id, eco_files) in enumerate(eco_dataset_files().items()):
            fmt = repo_id.split("/")[1]
            eco = self.add(Repo("dataset", repo_id, tags=[f"format:{fmt}", "size_categories:n<1K"]))
            c = eco.add_commit("main", files(*eco_files), "Add two configurations", f"2024-01-1{2 + n}T00:00:00.000Z")
            eco.branches = {"main": c.sha}

        # --- datasets/wide/files: more entries than one stored manifest page (1024) ------------------
        # So the mirror keeps its manifest in pages; its own namespace keeps every listing as it was.
        wide = self.add(Repo("dataset", "wide/files"))
        wide_files = [text("README.md", "# wide/files\n")]
        wide_files += [text(f"data/train/part-{i:04}.txt", f"train {i}\n") for i in range(1000)]
        wide_files += [text(f"data/test/part-{i:04}.txt", f"test {i}\n") for i in range(99)]
        c = wide.add_commit("main", files(*wide_files), "Add 1100 files", "2024-01-16T00:00:00.000Z")
        wide.branches = {"main": c.sha}

        # --- bench/big (optional) ----------------------------------------------------------------
        if big_size > 0:
            disk_path, digest = build_big_file(big_size, big_dir or os.path.join(tempfile.gettempdir(), "hf-mirror-fakehub"))
            big = self.add(Repo("model", "bench/big"))
            c = big.add_commit("main", files(
                FileEntry(".gitattributes", GITATTRIBUTES),
                FileEntry("big.bin", disk_path=disk_path, size=big_size, sha256=digest, lfs=True),
            ), "Big blob", "2024-01-11T00:00:00.000Z")
            big.branches = {"main": c.sha}

    def move_branch(self, repo: Repo, branch: str) -> str | None:
        with self.lock:
            commit = repo.prepared.get(branch)
            if commit is None:
                return repo.branches.get(branch)
            repo.commits[commit.sha] = commit
            repo.branches[branch] = commit.sha
            return commit.sha

    def state(self) -> dict:
        repos = {}
        for repo in self.repos.values():
            commits = {}
            for commit in repo.all_commits():
                commits[commit.sha] = {
                    "published": commit.sha in repo.commits,
                    "title": commit.title,
                    "date": commit.date,
                    "parent": commit.parent,
                    "files": {
                        path: {
                            "size": e.size,
                            "etag": e.etag,
                            "oid": e.oid,
                            "lfs": e.lfs,
                            **({"sha256": e.sha256, "pointer_size": len(e.pointer)} if e.lfs else {}),
                        }
                        for path, e in sorted(commit.files.items())
                    },
                    "dirs": sorted(commit.dirs),
                }
            refs = dict(repo.branches)
            refs.update(repo.tags)
            refs.update(repo.prs)
            repos[repo.key] = {
                "type": repo.type,
                "id": repo.id,
                "private": repo.private,
                "gated": repo.gated,
                "refs": refs,
                "branches": dict(repo.branches),
                "tags": dict(repo.tags),
                "pull_requests": dict(repo.prs),
                "prepared": {b: c.sha for b, c in repo.prepared.items()},
                "commits": commits,
            }
        return {
            "repos": repos,
            "renamed": {URL_PREFIX[t] + old: URL_PREFIX[t] + new for (t, old), new in self.renamed.items()},
            "tokens": {"valid": VALID_TOKEN, "other": OTHER_TOKEN},
        }


# ---------------------------------------------------------------------------------------------
# HTTP


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class Runtime:
    """Mutable switches and the request log shared by both listeners."""

    def __init__(self, data: HubData, page_size: int):
        self.data = data
        self.page_size = page_size
        self.lock = threading.Lock()
        self.log: list[dict] = []
        self.down = False
        self.rate_limited = False
        self.throttle = 0
        # When on, the CDN flips the first byte of every body it sends (a corrupt upstream).
        self.corrupt = False
        self.hub_origin = ""
        self.cdn_origin = ""
        # File-body bytes each listener sent: what a mirror really fetched, ranges included.
        self.bytes_sent = {"hub": 0, "cdn": 0}

    def record(self, entry: dict) -> None:
        with self.lock:
            self.log.append(entry)

    def count_bytes(self, role: str, n: int) -> None:
        with self.lock:
            self.bytes_sent[role] = self.bytes_sent.get(role, 0) + n


def header_safe(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\r", " ").replace("\n", " ")


def parse_query(raw_query: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(raw_query, keep_blank_values=True)


def query_first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def with_cursor(raw_query: str, cursor: str) -> str:
    """Keeps the caller's raw query parameters, replacing `cursor`."""
    parts = [p for p in raw_query.split("&") if p and p.split("=", 1)[0] != "cursor"]
    parts.append("cursor=" + cursor)
    return "&".join(parts)


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        offset = int(json.loads(base64.urlsafe_b64decode(padded))["offset"])
    except Exception:
        raise HttpError(400, "BadRequest", "Invalid cursor")
    if offset < 0:
        raise HttpError(400, "BadRequest", "Invalid cursor")
    return offset


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """Returns (start, end_inclusive), None (serve whole body) or "unsatisfiable"."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None  # malformed or multi-range: ignore, as many servers do
    first, last = m.group(1), m.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakehub/1.0"
    # http.server writes a response's head and body in separate sends; with Nagle's algorithm on, the
    # body of a response on a kept-alive connection waits for the client's delayed ACK of the head
    # (40 ms), which no real Hub front end does.
    disable_nagle_algorithm = True
    role = "hub"
    runtime: Runtime = None  # set on the subclass
    verbose = False
    timeout = 300

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if self.verbose:
            sys.stderr.write(f"[{self.role}] {self.address_string()} {format % args}\n")

    # --- plumbing ---------------------------------------------------------------------------

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def token(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()

    def send_bytes(self, status: int, body: bytes, headers: dict | list, content_type: str | None = None) -> None:
        self.send_response(status)
        items = headers.items() if isinstance(headers, dict) else headers
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in items:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def send_json(self, status: int, obj, headers: dict | list | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode()
        self.send_bytes(status, body, headers or {}, "application/json; charset=utf-8")

    def send_hub_error(self, err: HttpError) -> None:
        headers = {"X-Error-Code": err.code, "X-Error-Message": header_safe(err.message),
                   "X-Request-Id": "Root=1-" + uuid.uuid4().hex[:24]}
        headers.update(err.headers)
        self.send_json(err.status, {"error": err.message}, headers)

    def send_file_body(self, entry: FileEntry, start: int, length: int, throttle: int = 0) -> None:
        if self.command == "HEAD" or length <= 0:
            return
        corrupt = self.role == "cdn" and self.runtime.corrupt
        if entry.disk_path is not None and not throttle and not corrupt:
            with open(entry.disk_path, "rb") as f:
                sent = self.connection.sendfile(f, offset=start, count=length)
            self.runtime.count_bytes(self.role, sent)
            return
        chunk = 64 * 1024
        if throttle:
            chunk = max(1024, min(chunk, throttle // 10))
        sent = 0
        while sent < length:
            n = min(chunk, length - sent)
            data = entry.read(start + sent, start + sent + n - 1)
            if corrupt and sent == 0 and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            self.wfile.write(data)
            self.runtime.count_bytes(self.role, n)
            sent += n
            if throttle:
                time.sleep(n / throttle)

    def dispatch(self) -> None:
        raw_path, _, raw_query = self.path.partition("?")
        if raw_path.startswith(("http://", "https://")):  # absolute-form request target
            raw_path = "/" + raw_path.split("/", 3)[3] if raw_path.count("/") >= 3 else "/"
        try:
            body = self.read_body() if self.command in ("POST", "PUT", "PATCH") or self.headers.get("Content-Length") else b""
        except (ValueError, OSError):
            self.close_connection = True
            return
        try:
            if raw_path.startswith("/_fake/") and self.role == "hub":
                self.handle_control(raw_path, raw_query, body)
                return
            self.runtime.record({
                "server": self.role,
                "method": self.command,
                "path": raw_path,
                "query": raw_query,
                "auth": self.headers.get("Authorization") is not None,
                "range": self.headers.get("Range"),
            })
            if self.runtime.down:
                raise HttpError(503, "ServiceUnavailable", "The Hub is down for maintenance (fake)")
            if self.runtime.rate_limited and self.role == "hub":
                # huggingface.co's 429: Retry-After and the IETF RateLimit fields (hub-api.md T26).
                raise HttpError(429, "RateLimited", "You have exceeded our hourly quotas for action: resolvers (fake)", {
                    "Retry-After": "87",
                    "RateLimit": '"resolvers";r=0;t=87',
                    "RateLimit-Policy": '"fixed window";"resolvers";q=3000;w=300',
                })
            self.route(raw_path, raw_query, body)
        except HttpError as err:
            self.send_hub_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # keep serving; report as a Hub-format 500
            if self.verbose:
                import traceback
                traceback.print_exc()
            try:
                self.send_hub_error(HttpError(500, "InternalError", f"fake hub error: {exc!r}"))
            except OSError:
                self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = dispatch

    def route(self, raw_path: str, raw_query: str, body: bytes) -> None:
        raise NotImplementedError

    def handle_control(self, raw_path: str, raw_query: str, body: bytes) -> None:
        raise HttpError(404, "NotFound", "Not found")


class CdnHandler(BaseHandler):
    """Signed blob URLs, like cdn-lfs.hf.co / cas-bridge: rejects Authorization, supports Range."""

    role = "cdn"

    def route(self, raw_path: str, raw_query: str, body: bytes) -> None:
        if self.command not in ("GET", "HEAD"):
            raise HttpError(405, "MethodNotAllowed", "Method not allowed")
        m = re.fullmatch(r"/repos/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})", raw_path)
        if not m or m.group(3)[:2] != m.group(1) or m.group(3)[2:4] != m.group(2):
            raise HttpError(404, "NoSuchKey", "The specified key does not exist.")
        if self.headers.get("Authorization") is not None:
            raise HttpError(400, "InvalidArgument",
                            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                            "Signature query string parameter or the Authorization header should be specified")
        sha = m.group(3)
        query = parse_query(raw_query)
        expires = query_first(query, "Expires")
        if expires is None or query_first(query, "Signature") != cdn_signature(sha, expires):
            raise HttpError(403, "AccessDenied", "Access denied: bad or missing signature")
        entry = self.runtime.data.lfs_index.get(sha)
        if entry is None:
            raise HttpError(404, "NoSuchKey", "The specified key does not exist.")
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": '"' + sha[:32] + '"',
            "Last-Modified": "Tue, 02 Jan 2024 03:04:05 GMT",
            "Cache-Control": "public, max-age=604800, immutable",
        }
        disposition = query_first(query, "response-content-disposition")
        if disposition:
            headers["Content-Disposition"] = header_safe(disposition)
        rng = parse_range(self.headers.get("Range"), entry.size)
        if rng == "unsatisfiable":
            raise HttpError(416, "InvalidRange", "The requested range is not satisfiable",
                            {"Content-Range": f"bytes */{entry.size}"})
        status, start, length = 200, 0, entry.size
        if rng is not None:
            start, end = rng
            status, length = 206, end - start + 1
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.send_file_body(entry, start, length, self.runtime.throttle)


def cdn_signature(sha: str, expires: str) -> str:
    return hashlib.sha1(CDN_SIGNING_SECRET + f":{sha}:{expires}".encode()).hexdigest()


class HubHandler(BaseHandler):
    role = "hub"

    # --- control ----------------------------------------------------------------------------

    def handle_control(self, raw_path: str, raw_query: str, body: bytes) -> None:
        rt = self.runtime
        query = parse_query(raw_query)
        name = raw_path[len("/_fake/"):]
        if name == "requests" and self.command == "GET":
            with rt.lock:
                self.send_json(200, list(rt.log))
        elif name == "bytes" and self.command == "GET":
            with rt.lock:
                self.send_json(200, dict(rt.bytes_sent))
        elif name == "reset" and self.command == "POST":
            with rt.lock:
                rt.log.clear()
                rt.bytes_sent = {"hub": 0, "cdn": 0}
            self.send_json(200, {"ok": True})
        elif name == "move-branch" and self.command == "POST":
            repo_type = query_first(query, "type") or "model"
            repo = rt.data.get(repo_type, query_first(query, "repo") or "")
            branch = query_first(query, "branch") or "main"
            if repo is None:
                raise HttpError(404, "RepoNotFound", "no such repo")
            sha = rt.data.move_branch(repo, branch)
            if sha is None:
                raise HttpError(404, "RevisionNotFound", f"no branch {branch}")
            self.send_json(200, {"repo": repo.id, "branch": branch, "sha": sha})
        elif name == "down" and self.command == "POST":
            rt.down = parse_bool(query_first(query, "on"), True)
            self.send_json(200, {"down": rt.down})
        elif name == "rate-limit" and self.command == "POST":
            rt.rate_limited = parse_bool(query_first(query, "on"), True)
            self.send_json(200, {"rate_limited": rt.rate_limited})
        elif name == "corrupt" and self.command == "POST":
            rt.corrupt = parse_bool(query_first(query, "on"), True)
            self.send_json(200, {"corrupt": rt.corrupt})
        elif name == "throttle" and self.command == "POST":
            rt.throttle = max(0, int(query_first(query, "bytes_per_sec") or 0))
            self.send_json(200, {"bytes_per_sec": rt.throttle})
        elif name == "state" and self.command == "GET":
            state = rt.data.state()
            state.update({"hub": rt.hub_origin, "cdn": rt.cdn_origin, "page_size": rt.page_size,
                          "down": rt.down, "throttle": rt.throttle})
            self.send_json(200, state)
        elif name == "file" and self.command in ("GET", "HEAD"):
            repo = rt.data.get(query_first(query, "type") or "model", query_first(query, "repo") or "")
            if repo is None:
                raise HttpError(404, "RepoNotFound", "no such repo")
            rev = query_first(query, "rev") or "main"
            commit = repo.resolve(rev) or next((c for c in repo.all_commits() if c.sha == rev), None)
            if commit is None:
                raise HttpError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            entry = commit.files.get(query_first(query, "path") or "")
            if entry is None:
                raise HttpError(404, "EntryNotFound", "Entry not found")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("X-Repo-Commit", commit.sha)
            self.send_header("Content-Length", str(entry.size))
            self.end_headers()
            self.send_file_body(entry, 0, entry.size)
        else:
            raise HttpError(404, "NotFound", f"unknown control endpoint {self.command} {raw_path}")

    # --- routing ----------------------------------------------------------------------------

    def route(self, raw_path: str, raw_query: str, body: bytes) -> None:
        if raw_path == "/api/whoami-v2":
            return self.whoami()
        segments = raw_path.lstrip("/").split("/")
        if segments[0] == "api":
            if len(segments) == 2 and segments[1] in API_SEGMENT:
                return self.listing(API_SEGMENT[segments[1]], raw_path, raw_query)
            if len(segments) >= 3 and segments[1] in API_SEGMENT:
                return self.api_repo(API_SEGMENT[segments[1]], segments[2:], raw_path, raw_query, body)
            raise HttpError(404, "NotFound", "Sorry, we can't find the page you are looking for.")
        repo_type = "model"
        if segments[0] in ("datasets", "spaces") and len(segments) > 1:
            repo_type = segments[0][:-1]
            segments = segments[1:]
        if len(segments) >= 4 and segments[2] == "resolve":
            repo_raw, rest = segments[:2], segments[3:]
        elif len(segments) >= 3 and segments[1] == "resolve":
            repo_raw, rest = segments[:1], segments[2:]
        else:
            raise HttpError(404, "NotFound", "Sorry, we can't find the page you are looking for.")
        repo_id = "/".join(urllib.parse.unquote(s) for s in repo_raw)
        if (repo_type, repo_id) in self.runtime.data.renamed:
            new_id = self.runtime.data.renamed[(repo_type, repo_id)]
            return self.redirect_renamed("/" + URL_PREFIX[repo_type] + new_id + "/resolve/" + "/".join(rest), raw_query)
        if self.command not in ("GET", "HEAD"):
            raise HttpError(405, "MethodNotAllowed", "Method not allowed")
        return self.resolve_file(repo_type, repo_id, rest[0], "/".join(rest[1:]))

    def redirect_renamed(self, location: str, raw_query: str) -> None:
        if raw_query:
            location += "?" + raw_query
        body = f"Temporary Redirect. Redirecting to {location}".encode()
        self.send_bytes(307, body, {"Location": location}, "text/plain; charset=utf-8")

    def visible_repo(self, repo_type: str, repo_id: str) -> Repo:
        """RepoNotFound: 401 anonymous, 404 with any token (private repos look missing)."""
        repo = self.runtime.data.get(repo_type, repo_id)
        token = self.token()
        if repo is None or (repo.private and token != VALID_TOKEN):
            if token is None:
                raise HttpError(401, "RepoNotFound",
                                "Repository not found. Invalid username or password.")
            raise HttpError(404, "RepoNotFound", "Repository not found")
        return repo

    def check_gate(self, repo: Repo) -> None:
        if not repo.gated:
            return
        token = self.token()
        kind = repo.type
        if token is None:
            raise HttpError(401, "GatedRepo",
                            f"Access to {kind} {repo.id} is restricted. You must have access to it and be "
                            "authenticated to access it. Please log in.")
        if token != VALID_TOKEN:
            raise HttpError(403, "GatedRepo",
                            f"Access to {kind} {repo.id} is restricted and you are not in the authorized list. "
                            f"Visit {self.runtime.hub_origin}/{repo.key} to ask for access.")

    def commit_for(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HttpError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    # --- /resolve/ --------------------------------------------------------------------------

    def resolve_file(self, repo_type: str, repo_id: str, rev_raw: str, path_raw: str) -> None:
        repo = self.visible_repo(repo_type, repo_id)
        self.check_gate(repo)
        commit = self.commit_for(repo, urllib.parse.unquote(rev_raw))
        path = urllib.parse.unquote(path_raw)
        entry = commit.files.get(path)
        if entry is None:
            raise HttpError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
        name = path.rsplit("/", 1)[-1]
        disposition = f"inline; filename*=UTF-8''{urllib.parse.quote(name)}; filename=\"{header_safe(name).replace(chr(34), '')}\";"
        common = [
            ("X-Repo-Commit", commit.sha),
            ("X-Linked-Size", str(entry.size)),
            ("X-Request-Id", "Root=1-" + uuid.uuid4().hex[:24]),
            ("Vary", "Origin, Accept-Encoding"),
            ("Access-Control-Allow-Origin", "*"),
        ]
        if entry.lfs:
            origin = self.runtime.hub_origin
            sha = entry.sha256
            location = (f"{self.runtime.cdn_origin}/repos/{sha[:2]}/{sha[2:4]}/{sha}"
                        f"?response-content-disposition={urllib.parse.quote(disposition, safe='')}"
                        f"&Expires={CDN_EXPIRES}&Signature={cdn_signature(sha, CDN_EXPIRES)}&Key-Pair-Id=FAKEKEYPAIR")
            api_type = repo.type + "s"
            headers = common + [
                ("X-Linked-Etag", f'"{sha}"'),
                ("ETag", '"' + sha256_hex(b"hub-redirect-etag:" + sha.encode()) + '"'),
                ("Location", location),
                ("X-Xet-Hash", entry.xet_hash),
                ("X-Xet-Refresh-Route", f"/api/{api_type}/{repo.id}/xet-read-token/{commit.sha}"),
                ("Link", f'<{origin}/api/{api_type}/{repo.id}/xet-read-token/{commit.sha}>; rel="xet-auth", '
                         f'<{DEAD_CAS_URL}/v1/reconstructions/{entry.xet_hash}>; rel="xet-reconstruction-info"'),
                ("Content-Disposition", disposition),
            ]
            body = f"Found. Redirecting to {location}".encode()
            self.send_bytes(302, body, headers, "text/plain; charset=utf-8")
            return
        headers = common + [
            ("ETag", f'"{entry.oid}"'),
            ("X-Linked-Etag", f'"{entry.oid}"'),
            ("Accept-Ranges", "bytes"),
            ("Content-Disposition", disposition),
        ]
        rng = parse_range(self.headers.get("Range"), entry.size)
        if rng == "unsatisfiable":
            raise HttpError(416, "RangeNotSatisfiable", "Requested range not satisfiable",
                            {"Content-Range": f"bytes */{entry.size}", "X-Repo-Commit": commit.sha})
        status, start, length = 200, 0, entry.size
        if rng is not None:
            start, end = rng
            status, length = 206, end - start + 1
            headers.append(("Content-Range", f"bytes {start}-{end}/{entry.size}"))
        self.send_response(status)
        self.send_header("Content-Type", entry.content_type())
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.send_file_body(entry, start, length)

    # --- /api/{t}s/{repo}… ------------------------------------------------------------------

    def api_repo(self, repo_type: str, segs: list[str], raw_path: str, raw_query: str, body: bytes) -> None:
        data = self.runtime.data
        if len(segs) >= 2 and data.get(repo_type, "/".join(segs[:2])) is not None:
            n = 2
        elif data.get(repo_type, segs[0]) is not None and (len(segs) == 1 or segs[1] in API_SUBROUTES):
            n = 1
        elif len(segs) == 1 or (len(segs) >= 2 and segs[1] in API_SUBROUTES):
            n = 1
        else:
            n = 2
        repo_id = "/".join(urllib.parse.unquote(s) for s in segs[:n])
        rest = segs[n:]
        if (repo_type, repo_id) in data.renamed:
            new_id = data.renamed[(repo_type, repo_id)]
            api_type = repo_type + "s"
            return self.redirect_renamed(f"/api/{api_type}/{new_id}" + "".join("/" + s for s in rest), raw_query)
        query = parse_query(raw_query)
        sub = rest[0] if rest else ""
        if sub == "" and not rest:
            self.require_method("GET", "HEAD")
            repo = self.visible_repo(repo_type, repo_id)
            return self.send_json(200, self.repo_info(repo, self.commit_for(repo, "main"), query))
        if sub == "revision" and len(rest) >= 2:
            self.require_method("GET", "HEAD")
            repo = self.visible_repo(repo_type, repo_id)
            commit = self.commit_for(repo, urllib.parse.unquote("/".join(rest[1:])))
            return self.send_json(200, self.repo_info(repo, commit, query))
        if sub == "tree" and len(rest) >= 2:
            self.require_method("GET", "HEAD")
            repo = self.visible_repo(repo_type, repo_id)
            commit = self.commit_for(repo, urllib.parse.unquote(rest[1]))
            path = urllib.parse.unquote("/".join(rest[2:])).strip("/")
            return self.tree(repo, commit, path, raw_path, raw_query, query)
        if sub == "paths-info" and len(rest) >= 2:
            self.require_method("POST")
            repo = self.visible_repo(repo_type, repo_id)
            commit = self.commit_for(repo, urllib.parse.unquote("/".join(rest[1:])))
            return self.paths_info(commit, body)
        if sub == "refs" and len(rest) == 1:
            self.require_method("GET", "HEAD")
            repo = self.visible_repo(repo_type, repo_id)
            return self.refs(repo, parse_bool(query_first(query, "include_prs")))
        if sub == "commits" and len(rest) >= 2:
            self.require_method("GET", "HEAD")
            repo = self.visible_repo(repo_type, repo_id)
            commit = self.commit_for(repo, urllib.parse.unquote("/".join(rest[1:])))
            return self.commits(repo, commit)
        if sub == "xet-read-token" and len(rest) == 2:
            self.require_method("GET")
            repo = self.visible_repo(repo_type, repo_id)
            self.check_gate(repo)
            expiration = str(int(time.time()) + 3600)
            return self.send_json(200, {"casUrl": DEAD_CAS_URL, "accessToken": "xet_fake_read_token", "exp": int(expiration)}, {
                "X-Xet-Cas-Url": DEAD_CAS_URL,
                "X-Xet-Access-Token": "xet_fake_read_token",
                "X-Xet-Token-Expiration": expiration,
            })
        raise HttpError(404, "NotFound", "Sorry, we can't find the page you are looking for.")

    def require_method(self, *methods: str) -> None:
        if self.command not in methods:
            raise HttpError(405, "MethodNotAllowed", f"Method {self.command} not allowed")

    def repo_info(self, repo: Repo, commit: Commit, query: dict[str, list[str]]) -> dict:
        blobs = parse_bool(query_first(query, "blobs"))
        siblings = []
        for path in sorted(commit.files):
            entry = commit.files[path]
            sibling = {"rfilename": path}
            if blobs:
                sibling["blobId"] = entry.oid
                sibling["size"] = entry.size
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": len(entry.pointer)}
            siblings.append(sibling)
        info = {
            "_id": sha1_hex(repo.key.encode())[:24],
            "id": repo.id,
        }
        if repo.type == "model":
            info["modelId"] = repo.id
        info.update({
            "author": repo.id.split("/")[0] if "/" in repo.id else None,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "likes": 0,
            "tags": list(repo.model_tags),
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        })
        if repo.type != "space":
            info["downloads"] = 0
        if repo.type == "model":
            info["library_name"] = repo.extra.get("library_name")
            info["pipeline_tag"] = repo.extra.get("pipeline_tag")
            info["spaces"] = []
        if repo.type == "space":
            info["sdk"] = repo.extra.get("sdk", "gradio")
            info["subdomain"] = repo.id.replace("/", "-")
        if info["author"] is None:
            del info["author"]
        expand = query.get("expand", []) + query.get("expand[]", [])
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        return info

    def tree_entry(self, commit: Commit, path: str, expand: bool) -> dict:
        if path in commit.files:
            entry = commit.files[path]
            out = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
            if entry.lfs:
                out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(entry.pointer)}
                out["xetHash"] = entry.xet_hash
            if expand:
                out["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
                out["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"status": "safe", "version": "fake-1"},
                    "pickleImportScan": {"status": "unscanned", "pickleImports": [], "version": "fake-1"},
                }
            return out
        out = {"type": "directory", "oid": commit.tree_oid(path), "size": 0, "path": path}
        if expand:
            out["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
        return out

    def tree(self, repo: Repo, commit: Commit, path: str, raw_path: str, raw_query: str,
             query: dict[str, list[str]]) -> None:
        recursive = parse_bool(query_first(query, "recursive"))
        expand = parse_bool(query_first(query, "expand"))
        if path and path not in commit.dirs:
            raise HttpError(404, "EntryNotFound",
                            f"Entry not found: \"{path}\" does not exist at revision \"{commit.sha}\"")
        prefix = path + "/" if path else ""
        names = [p for p in list(commit.dirs) + list(commit.files)
                 if p.startswith(prefix) and p != path and (recursive or "/" not in p[len(prefix):])]
        # directories first, then files, each sorted (like the Hub's listing)
        names.sort(key=lambda p: (p in commit.files, p))
        offset = decode_cursor(query_first(query, "cursor"))
        page_size = self.runtime.page_size
        page = names[offset:offset + page_size]
        headers = {}
        if offset + page_size < len(names):
            link = f"{self.runtime.hub_origin}{raw_path}?{with_cursor(raw_query, encode_cursor(offset + page_size))}"
            headers["Link"] = f'<{link}>; rel="next"'
        self.send_json(200, [self.tree_entry(commit, p, expand) for p in page], headers)

    def paths_info(self, commit: Commit, body: bytes) -> None:
        ctype = (self.headers.get("Content-Type") or "").lower()
        paths: list[str] = []
        expand = False
        if "json" in ctype or body.lstrip().startswith(b"{"):
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                raise HttpError(400, "BadRequest", "Invalid JSON body")
            raw_paths = payload.get("paths", [])
            paths = [raw_paths] if isinstance(raw_paths, str) else list(raw_paths)
            expand = payload.get("expand") in (True, 1) or parse_bool(str(payload.get("expand")))
        else:
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            paths = form.get("paths", []) + form.get("paths[]", [])
            expand = parse_bool(query_first(form, "expand"))
        out, seen = [], set()
        for p in paths:
            p = str(p).strip("/")
            if p in seen or not (p in commit.files or p in commit.dirs):
                continue
            seen.add(p)
            out.append(self.tree_entry(commit, p, expand))
        self.send_json(200, out)

    def refs(self, repo: Repo, include_prs: bool) -> None:
        out = {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in sorted(repo.branches.items())],
            "converts": [],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in sorted(repo.tags.items())],
        }
        if include_prs:
            out["pullRequests"] = [{"name": n, "ref": n, "targetCommit": s} for n, s in sorted(repo.prs.items())]
        self.send_json(200, out)

    def commits(self, repo: Repo, commit: Commit) -> None:
        out = []
        current: Commit | None = commit
        while current is not None:
            out.append({"id": current.sha, "title": current.title, "message": "", "date": current.date,
                        "authors": [{"user": "alice", "avatar": None}]})
            current = repo.commits.get(current.parent) if current.parent else None
        self.send_json(200, out)

    # --- listings and whoami ----------------------------------------------------------------

    def listing(self, repo_type: str, raw_path: str, raw_query: str) -> None:
        self.require_method("GET", "HEAD")
        query = parse_query(raw_query)
        token = self.token()
        searches = [s.lower() for s in query.get("search", []) if s]
        author = query_first(query, "author")
        filters = query.get("filter", [])
        repos = []
        for repo in sorted(self.runtime.data.repos.values(), key=lambda r: r.id):
            if repo.type != repo_type or (repo.private and token != VALID_TOKEN):
                continue
            if searches and not all(s in repo.id.lower() for s in searches):
                continue
            if author and repo.id.split("/")[0] != author:
                continue
            if filters and not all(f in repo.model_tags for f in filters):
                continue
            repos.append(repo)
        try:
            page_size = int(query_first(query, "limit") or self.runtime.page_size)
        except ValueError:
            raise HttpError(400, "BadRequest", "Invalid limit")
        page_size = max(1, min(page_size, 1000))
        offset = decode_cursor(query_first(query, "cursor"))
        page = repos[offset:offset + page_size]
        headers = {}
        if offset + page_size < len(repos):
            link = f"{self.runtime.hub_origin}{raw_path}?{with_cursor(raw_query, encode_cursor(offset + page_size))}"
            headers["Link"] = f'<{link}>; rel="next"'
        full = parse_bool(query_first(query, "full"))
        items = []
        for repo in page:
            info = self.repo_info(repo, self.commit_for(repo, "main"), {})
            if not full:
                info.pop("siblings", None)
                info.pop("usedStorage", None)
            items.append(info)
        self.send_json(200, items, headers)

    def whoami(self) -> None:
        token = self.token()
        users = {
            VALID_TOKEN: ("alice", [{"type": "org", "name": "org", "fullname": "Org", "roleInOrg": "admin"}]),
            OTHER_TOKEN: ("bob", []),
        }
        if token not in users:
            raise HttpError(401, "Unauthorized", "Invalid credentials in Authorization header")
        name, orgs = users[token]
        self.send_json(200, {
            "type": "user", "id": sha1_hex(name.encode())[:24], "name": name, "fullname": name.title(),
            "email": f"{name}@example.invalid", "emailVerified": True, "canPay": False, "isPro": False,
            "periodEnd": None, "avatarUrl": "", "orgs": orgs,
            "auth": {"type": "access_token", "accessToken": {"displayName": f"{name}-token", "role": "read",
                                                             "createdAt": "2024-01-01T00:00:00.000Z"}},
        })


# ---------------------------------------------------------------------------------------------
# main


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_handler(base: type, runtime: Runtime, verbose: bool) -> type:
    return type(base.__name__ + "Bound", (base,), {"runtime": runtime, "verbose": verbose})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-host", default="127.0.0.2")
    parser.add_argument("--cdn-port", type=int, default=0)
    parser.add_argument("--page-size", type=int, default=3)
    parser.add_argument("--big-size", type=int, default=0)
    parser.add_argument("--big-dir", default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    data = HubData(args.big_size, args.big_dir)
    runtime = Runtime(data, max(1, args.page_size))
    hub = Server((args.host, args.port), make_handler(HubHandler, runtime, args.verbose))
    cdn = Server((args.cdn_host, args.cdn_port), make_handler(CdnHandler, runtime, args.verbose))
    runtime.hub_origin = f"http://{args.host}:{hub.server_address[1]}"
    runtime.cdn_origin = f"http://{args.cdn_host}:{cdn.server_address[1]}"

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True) for s in (hub, cdn)]
    for t in threads:
        t.start()
    sys.stdout.write(f"fakehub {runtime.hub_origin} cdn {runtime.cdn_origin}\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    for s in (hub, cdn):
        s.shutdown()
        s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
