"""The edge's limits on anonymous clients: 429 in the Hub's format with Retry-After, before any
upstream work; the daily byte quota points to rsync; a real client's pagination honours Retry-After.
Loopback is free by default, so these nodes name 127.0.0.0/8 in an allow rule with small quotas."""

import subprocess
import sys
import time

import huggingface_hub
import pytest

from conftest import clean_env, topology_mirror


def limited_mirror(fake_hub, tmp_path, rule: str):
    return topology_mirror(fake_hub.url, tmp_path, f"[[limits.allow]]\nprefix = \"127.0.0.0/8\"\n{rule}")


@pytest.fixture
def rate_limited(fake_hub, tmp_path):
    mirror = limited_mirror(fake_hub, tmp_path, "requests_per_second = 1\nburst = 3\ndaily_bytes = \"0\"")
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.fixture
def byte_limited(fake_hub, tmp_path):
    mirror = limited_mirror(fake_hub, tmp_path, "requests_per_second = 0\ndaily_bytes = \"1MB\"")
    try:
        yield mirror
    finally:
        mirror.stop()


def test_over_the_rate_a_client_gets_429_with_retry_after_and_upstream_sees_nothing(rate_limited, fake_hub):
    answers = [rate_limited.request("GET", "/api/models/org/model") for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]
    fake_hub.reset()
    refused = rate_limited.request("GET", "/api/models/org/tiny-tokenizer")
    assert refused.status == 429, refused
    assert refused.header("X-Error-Code") == "RateLimited"
    assert "error" in refused.json() and refused.header("X-Error-Message")
    retry_after = int(refused.header("Retry-After"))
    assert 1 <= retry_after <= 2
    assert not [r for r in fake_hub.requests() if "tiny-tokenizer" in r["path"]], "a refused request did no upstream work"
    time.sleep(retry_after)
    assert rate_limited.request("GET", "/api/models/org/tiny-tokenizer").status == 200


def test_past_the_daily_bytes_a_client_is_pointed_to_rsync(byte_limited):
    big = byte_limited.request("GET", "/org/model/resolve/main/model.safetensors")
    assert big.status == 200 and len(big.body) > 1_000_000
    assert byte_limited.request("HEAD", "/org/model/resolve/main/config.json").status == 429
    refused = byte_limited.request("GET", "/org/model/resolve/main/config.json")
    assert refused.status == 429 and refused.header("X-Error-Code") == "RateLimited"
    assert "rsync" in refused.json()["error"], refused.json()
    assert int(refused.header("Retry-After")) <= 3600


@pytest.mark.skipif(int(huggingface_hub.__version__.split(".")[0]) < 2, reason="pagination honours Retry-After in 2.x")
def test_a_real_clients_pagination_waits_out_429(rate_limited, fake_hub):
    script = (
        "from huggingface_hub import HfApi\n"
        "entries = list(HfApi().list_repo_tree('org/model', recursive=True))\n"
        "print(len(entries))\n"
    )
    env = clean_env() | {"HF_ENDPOINT": rate_limited.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    files = fake_hub.files("org/model")
    dirs = fake_hub.state()["repos"]["org/model"]["commits"][fake_hub.sha("org/model")]["dirs"]
    assert int(result.stdout.strip()) == len(files) + len(dirs)
    assert "status=429" in rate_limited.logs(), "the pages were refused at least once and retried"
