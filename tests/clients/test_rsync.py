"""A single node with its rsync daemon: `hf-mirror mirror` pins a repo, the real rsync client pulls
it from the `models` module and gets upstream's bytes, a second pull transfers nothing, a pinned
branch that moves upstream switches the tree, and the `indexes` module's Parquet files (read with
pyarrow) match the catalog. Runs in the venv that has pyarrow (hub2)."""

import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import clean_env, mirror_bin, topology_mirror, wait_until

pq = pytest.importorskip("pyarrow.parquet")

COMMIT_LINE = "commit: "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rsync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def rsync_mirror(fake_hub, tmp_path):
    port = free_port()
    mirror = topology_mirror(fake_hub.url, tmp_path, f"""[rsync]
listen = "127.0.0.1:{port}"
index_interval = "1s"
max_connections = 8
timeout_secs = 60""")
    mirror.rsync_url = f"rsync://127.0.0.1:{port}"
    try:
        yield mirror
    finally:
        mirror.stop()


def pin(mirror, repo: str, repo_type: str = "model") -> str:
    result = subprocess.run([str(mirror_bin()), "mirror", "--repo", repo, "--type", repo_type, *mirror.operator_args()],
                            capture_output=True, text=True, timeout=300, env=clean_env())
    assert result.returncode == 0, result.stderr + result.stdout
    assert "is on every live node" in result.stdout, result.stdout
    return result.stdout


def trace_commit(mirror, module_path: str) -> str | None:
    """The commit the trace file of a repo's tree names, or None while the repo is not shown."""
    listed = rsync(f"{mirror.rsync_url}/{module_path}/.hf-mirror-trace")
    if listed.returncode != 0:
        return None
    # A fresh file each time, as a first pull would see it.
    local = Path(tempfile.mkdtemp(dir=mirror.workdir)) / "trace"
    pulled = rsync("-a", f"{mirror.rsync_url}/{module_path}/.hf-mirror-trace", str(local))
    if pulled.returncode != 0:
        return None
    for line in local.read_text().splitlines():
        if line.startswith(COMMIT_LINE):
            return line[len(COMMIT_LINE):]
    return None


def assert_tree_matches(fake_hub, key: str, repo: str, repo_type: str, sha: str, pulled: Path) -> None:
    files = fake_hub.state(fresh=True)["repos"][key]["commits"][sha]["files"]
    on_disk = {str(p.relative_to(pulled)) for p in pulled.rglob("*") if p.is_file()}
    assert on_disk == set(files) | {".hf-mirror-trace"}, on_disk ^ (set(files) | {".hf-mirror-trace"})
    for path in files:
        expected = fake_hub.file(repo, path, rev=sha, repo_type=repo_type)
        assert (pulled / path).read_bytes() == expected, path


def test_a_pinned_repo_pulled_with_rsync_has_upstreams_bytes_and_a_second_pull_transfers_nothing(rsync_mirror, fake_hub, tmp_path):
    modules = rsync(rsync_mirror.rsync_url + "/")
    assert modules.returncode == 0 and all(m in modules.stdout for m in ("models", "datasets", "indexes")), modules
    status = subprocess.run([str(mirror_bin()), "status", *rsync_mirror.operator_args()], capture_output=True, text=True,
                            timeout=30, env=clean_env())
    assert status.returncode == 0 and "rsync" in status.stdout.splitlines()[0], status.stdout
    assert status.stdout.splitlines()[1].split()[0] == "solo" and " up " in status.stdout.splitlines()[1], status.stdout
    sha = fake_hub.sha("org/model")
    pin(rsync_mirror, "org/model")
    wait_until(lambda: trace_commit(rsync_mirror, "models/org/model") == sha, "the pinned repo's tree", timeout=60)

    pulled = tmp_path / "pulled"
    first = rsync("-a", f"{rsync_mirror.rsync_url}/models/org/model/", str(pulled))
    assert first.returncode == 0, first.stderr
    assert_tree_matches(fake_hub, "org/model", "org/model", "model", sha, pulled)
    second = rsync("-a", "--stats", f"{rsync_mirror.rsync_url}/models/org/model/", str(pulled))
    assert second.returncode == 0, second.stderr
    assert "Number of regular files transferred: 0" in second.stdout, second.stdout

    # A dataset goes to the datasets module; the whole module pulls as plain files.
    ds_sha = fake_hub.sha("datasets/org/dataset")
    pin(rsync_mirror, "org/dataset", "dataset")
    wait_until(lambda: trace_commit(rsync_mirror, "datasets/org/dataset") == ds_sha, "the dataset's tree", timeout=60)
    whole = tmp_path / "datasets"
    pulled_all = rsync("-a", f"{rsync_mirror.rsync_url}/datasets/", str(whole))
    assert pulled_all.returncode == 0, pulled_all.stderr
    assert_tree_matches(fake_hub, "datasets/org/dataset", "org/dataset", "dataset", ds_sha, whole / "org" / "dataset")
    assert not any(p.is_symlink() for p in whole.rglob("*"))

    # Unpinned, the repo leaves the module.
    result = subprocess.run([str(mirror_bin()), "mirror", "--repo", "org/dataset", "--type", "dataset", "--unpin",
                             *rsync_mirror.operator_args()], capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.returncode == 0, result.stderr
    wait_until(lambda: trace_commit(rsync_mirror, "datasets/org/dataset") is None, "the unpinned tree to go", timeout=30)


def test_a_pinned_branch_that_moves_upstream_switches_the_tree(rsync_mirror, fake_hub, tmp_path):
    old = fake_hub.sha("org/model")
    pin(rsync_mirror, "org/model")
    wait_until(lambda: trace_commit(rsync_mirror, "models/org/model") == old, "the first tree", timeout=60)
    new = fake_hub.move_branch("org/model", "main")
    assert new != old
    # The node follows the branch (every ref TTL, at least 5 s), fills the new commit, then switches.
    wait_until(lambda: trace_commit(rsync_mirror, "models/org/model") == new, "the switch to the new commit", timeout=90)
    pulled = tmp_path / "pulled"
    result = rsync("-a", f"{rsync_mirror.rsync_url}/models/org/model/", str(pulled))
    assert result.returncode == 0, result.stderr
    assert_tree_matches(fake_hub, "org/model", "org/model", "model", new, pulled)
    pins = rsync_mirror.operator_request("GET", "/_hfm/pins").json()["pins"]
    assert [p["commit"] for p in pins if p["repo"] == "org/model"] == [new]


def test_the_parquet_indexes_match_the_catalog(rsync_mirror, fake_hub, tmp_path):
    sha = fake_hub.sha("org/model")
    pin(rsync_mirror, "org/model")
    indexes = tmp_path / "indexes"

    def pins_indexed() -> bool:
        if rsync("-a", "--delete", f"{rsync_mirror.rsync_url}/indexes/latest/", str(indexes)).returncode != 0:
            return False
        table = pq.read_table(indexes / "completeness.parquet").to_pylist()
        return any(row["repo"] == "org/model" and row["complete"] for row in table)

    wait_until(pins_indexed, "an index snapshot with the complete pin", timeout=60)
    files = pq.read_table(indexes / "files.parquet").to_pylist()
    indexed = {row["path"]: row for row in files if row["repo"] == "org/model" and row["commit"] == sha}
    upstream = fake_hub.state(fresh=True)["repos"]["org/model"]["commits"][sha]["files"]
    assert set(indexed) == set(upstream)
    for path, meta in upstream.items():
        row = indexed[path]
        assert row["type"] == "model" and row["size"] == meta["size"], path
        assert row["git_oid"] == meta["oid"], path
        if meta["lfs"]:
            assert row["lfs_sha256"] == meta["sha256"] and row["etag"] == meta["sha256"], path
        else:
            assert row["lfs_sha256"] is None and row["etag"] == meta["oid"], path

    pins = pq.read_table(indexes / "pins.parquet").to_pylist()
    assert [(p["repo"], p["type"], p["revision"], p["commit"]) for p in pins] == [("org/model", "model", "main", sha)]
    assert pins[0]["files"] == len(upstream) and pins[0]["bytes"] == sum(m["size"] for m in upstream.values())
    completeness = pq.read_table(indexes / "completeness.parquet").to_pylist()
    assert [(c["node"], c["complete"], c["files_held"]) for c in completeness] == [("solo", True, len(upstream))]
    revisions = pq.read_table(indexes / "revisions.parquet").to_pylist()
    assert any(r["repo"] == "org/model" and r["revision"] == "main" and r["commit"] == sha for r in revisions), revisions
    repos = pq.read_table(indexes / "repos.parquet").to_pylist()
    assert [(r["cacheable"], r["pinned"]) for r in repos if r["repo"] == "org/model" and r["type"] == "model"] == [(True, True)]
    # The status endpoint agrees with the index.
    status = rsync_mirror.operator_request("GET", "/_hfm/pins").json()["pins"][0]
    assert status["commit"] == sha and status["nodes"]["solo"]["complete"] is True
    # Dated snapshots sit beside latest.
    listing = rsync(f"{rsync_mirror.rsync_url}/indexes/")
    assert "latest" in listing.stdout and any(line.split()[-1][:2] == "20" for line in listing.stdout.splitlines()), listing.stdout


def scrub_damaged(mirror) -> int:
    metrics = mirror.operator_request("GET", "/metrics").body.decode()
    for line in metrics.splitlines():
        if line.startswith("hfm_scrub_damaged_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no hfm_scrub_damaged_total in /metrics")


def test_bit_rot_under_a_pinned_repo_is_found_by_the_scrubber_leaves_rsync_and_is_filled_again(fake_hub, tmp_path):
    port = free_port()
    mirror = topology_mirror(fake_hub.url, tmp_path, f"""[defaults]
scrub_interval = "1s"
scrub_rate = "1GB"

[rsync]
listen = "127.0.0.1:{port}"
index_interval = "1h"
max_connections = 8
timeout_secs = 60""")
    mirror.rsync_url = f"rsync://127.0.0.1:{port}"
    try:
        pin(mirror, "org/model")
        sha = fake_hub.sha()
        wait_until(lambda: trace_commit(mirror, "models/org/model") == sha, "the tree of the pinned repo", timeout=60)
        meta = fake_hub.files()["model.safetensors"]
        good = fake_hub.file("org/model", "model.safetensors")
        blob = mirror.data_dir / "blobs" / meta["sha256"][:2] / meta["sha256"]
        # A bad sector under the blob: the rsync tree links the same inode.
        with open(blob, "r+b") as handle:
            handle.seek(meta["size"] // 2)
            byte = handle.read(1)
            handle.seek(meta["size"] // 2)
            handle.write(bytes([byte[0] ^ 0xFF]))
        wait_until(lambda: scrub_damaged(mirror) >= 1, "the scrubber to find the damaged blob", timeout=60)

        def served_by_rsync() -> bytes | None:
            local = Path(tempfile.mkdtemp(dir=tmp_path)) / "model.safetensors"
            pulled = rsync("-a", f"{mirror.rsync_url}/models/org/model/model.safetensors", str(local))
            return local.read_bytes() if pulled.returncode == 0 and local.exists() else None

        # Filled again (the pin keeper) and laid out again: rsync serves the right bytes.
        wait_until(lambda: served_by_rsync() == good, "rsync to serve the good bytes again", timeout=90)
        pulled = tmp_path / "pulled"
        assert rsync("-a", f"{mirror.rsync_url}/models/org/model/", str(pulled)).returncode == 0
        assert_tree_matches(fake_hub, "org/model", "org/model", "model", sha, pulled)
        assert "scrub: a stored chunk does not match its sum" in mirror.logs()
    finally:
        mirror.stop()
