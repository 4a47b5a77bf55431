"""Metrics and probes: `/metrics` in Prometheus' text format on the operator port (never on the
public HTTP port), `/healthz`, `/readyz`; the counters move with real downloads."""

import re
import socket

import pytest

from conftest import Mirror, http_request

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+|\+Inf|NaN)$')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text: str) -> dict[str, float]:
    """Every sample by its full name with labels; every line must be valid exposition format."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.match(line), f"not a Prometheus sample: {line!r}"
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


@pytest.fixture
def metered(fake_hub, tmp_path):
    operator = f"127.0.0.1:{free_port()}"
    mirror = Mirror(fake_hub.url, tmp_path / "mirror",
                    extra_args=["--metrics-listen", operator, "--rsync-listen", f"127.0.0.1:{free_port()}"])
    mirror.operator_url = f"http://{operator}"
    try:
        yield mirror
    finally:
        mirror.stop()


def test_metrics_follow_downloads_and_probes_answer(metered, fake_hub):
    assert http_request(metered.operator_url, "GET", "/healthz").status == 200
    assert http_request(metered.operator_url, "GET", "/readyz").status == 200
    assert metered.request("GET", "/readyz").status == 200
    path = "/org/model/resolve/main/model.safetensors"
    size = fake_hub.files()["model.safetensors"]["size"]
    assert metered.request("GET", path).status == 200  # cold: from upstream
    assert metered.request("GET", path).status == 200  # warm: from disk
    response = http_request(metered.operator_url, "GET", "/metrics")
    assert response.status == 200 and response.header("Content-Type").startswith("text/plain; version=0.0.4")
    samples = parse(response.body.decode())
    assert samples['hfm_requests_total{route="resolve",status="200",cache="MISS"}'] >= 1
    assert samples['hfm_requests_total{route="resolve",status="200",cache="HIT"}'] >= 1
    assert samples['hfm_bytes_total{source="upstream"}'] >= size
    assert samples['hfm_bytes_total{source="disk"}'] >= size
    assert samples["hfm_upstream_requests_total"] >= 1
    assert samples["hfm_fill_duration_seconds_count"] >= 1
    assert samples['hfm_fill_duration_seconds_bucket{le="+Inf"}'] == samples["hfm_fill_duration_seconds_count"]
    assert samples["hfm_store_blobs"] >= 1 and samples["hfm_store_bytes"] >= size
    assert samples['hfm_rate_limited_total{reason="rate"}'] == 0
    assert samples["hfm_rsync_up"] == 1 and samples["hfm_rsync_restarts_total"] == 0
    assert samples["hfm_access_log_dropped_total"] == 0
    assert "hfm_gossip_members" not in response.body.decode(), "a single node has no gossip"
    assert samples["hfm_connections_open"] >= 0 and samples["hfm_connections_refused_total"] == 0
    # The public port serves no metrics, not even to the node's own host (a proxy there would be anyone).
    own = metered.request("GET", "/metrics")
    assert own.status == 404
