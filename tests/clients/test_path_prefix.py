"""A node under a path prefix (issue 15): `public_url = http://HOST:PORT/hf` puts every route, link
and redirect under `/hf`, as when a shared reverse proxy forwards `/hf/…` to the node unchanged.
Real clients use `HF_ENDPOINT=http://HOST:PORT/hf`."""

import socket
from pathlib import Path

import pytest

from conftest import Mirror

PREFIX = "/hf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefixed(fake_hub, tmp_path):
    port = free_port()
    mirror = Mirror(fake_hub.url, tmp_path / "prefixed", listen=f"127.0.0.1:{port}",
                    extra_args=["--public-url", f"http://127.0.0.1:{port}{PREFIX}"])
    mirror.endpoint = f"http://127.0.0.1:{port}{PREFIX}"
    try:
        yield mirror
    finally:
        mirror.stop()


def test_real_clients_work_under_the_prefix(prefixed, fake_hub, client):
    code = """
    from huggingface_hub import hf_hub_download, snapshot_download, HfApi
    api = HfApi()
    result = {
        "config": hf_hub_download("org/model", "config.json"),
        "renamed": hf_hub_download("old-org/renamed", "config.json"),
        "snapshot": snapshot_download("org/model"),
        "tree": sorted(e.path for e in api.list_repo_tree("org/model", recursive=True)),
        "sha": api.model_info("org/model").sha,
    }
    """
    res = client.run(code, client.env(prefixed.endpoint))
    assert res.ok, res
    assert Path(res.result["config"]).read_bytes() == fake_hub.file("org/model", "config.json")
    assert Path(res.result["renamed"]).read_bytes() == fake_hub.file("org/model", "config.json")
    snapshot = Path(res.result["snapshot"])
    for path in fake_hub.files("org/model"):
        assert (snapshot / path).read_bytes() == fake_hub.file("org/model", path), path
    files = set(fake_hub.files("org/model"))
    assert files <= set(res.result["tree"])
    assert res.result["sha"] == fake_hub.sha()


def test_links_and_redirects_stay_under_the_prefix(prefixed, fake_hub):
    # The tree pages (4 entries each) link to the next page under the prefix.
    page = prefixed.request("GET", f"{PREFIX}/api/models/org/model/tree/main?recursive=true")
    assert page.status == 200, page
    assert page.header("Link") and page.header("Link").startswith(f"<{prefixed.endpoint}/api/models/org/model/tree/"), page
    # A renamed repo's API redirect (relative at upstream) points under the prefix.
    moved = prefixed.request("GET", f"{PREFIX}/api/models/old-org/renamed")
    if moved.status in (301, 302, 307, 308):
        assert moved.header("Location").startswith(f"{PREFIX}/") or moved.header("Location").startswith(prefixed.endpoint), moved
    else:
        assert moved.status == 200, moved


def test_outside_the_prefix_only_the_probes_answer(prefixed):
    assert prefixed.request("GET", f"{PREFIX}/org/model/resolve/main/config.json").status == 200
    outside = prefixed.request("GET", "/org/model/resolve/main/config.json")
    assert outside.status == 404 and outside.header("X-Error-Code") == "NotFound", outside
    assert prefixed.request("GET", "/hfx/org/model/resolve/main/config.json").status == 404
    for probe in ("/healthz", f"{PREFIX}/healthz", "/readyz"):
        assert prefixed.request("GET", probe).status == 200, probe
