"""The access log: one JSON line per request with the client address anonymised, and no token,
cookie or query secret anywhere the node writes (log files and its own stderr)."""

import json
import subprocess
import sys

from conftest import clean_env, wait_until

SECRETS = ("hf_TOKENSECRET0123456789", "COOKIESECRET42", "QUERYSECRET77")


def access_lines(mirror) -> list[dict]:
    lines = []
    for path in sorted((mirror.data_dir / "logs").glob("access-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def test_every_request_is_logged_anonymised_and_without_secrets(mirror, fake_hub):
    headers = {"Authorization": f"Bearer {SECRETS[0]}", "Cookie": f"session={SECRETS[1]}", "User-Agent": "access-log-test/1.0"}
    assert mirror.request("GET", "/api/models/org/model", headers=headers).status == 200
    assert mirror.request("GET", f"/api/models/org/model/tree/main?recursive=true&token={SECRETS[2]}", headers=headers).status == 200
    assert mirror.request("GET", "/api/models/org/private", headers=headers).status in (200, 401, 403, 404)
    assert mirror.request("GET", "/org/model/resolve/main/config.json", headers=headers).status == 200
    # A real client with a token, too.
    script = "from huggingface_hub import hf_hub_download; print(hf_hub_download('org/model', 'README.md'))"
    env = clean_env() | {"HF_ENDPOINT": mirror.url, "HF_TOKEN": SECRETS[0], "HF_HOME": str(mirror.workdir / "hf-home")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]

    wait_until(lambda: any(line["path"].endswith("/README.md") for line in access_lines(mirror)), "the client's lines")
    lines = access_lines(mirror)
    mine = [line for line in lines if line["user_agent"] == "access-log-test/1.0"]
    assert [line["path"] for line in mine] == [
        "/api/models/org/model", "/api/models/org/model/tree/main", "/api/models/org/private", "/org/model/resolve/main/config.json",
    ]
    resolve = mine[-1]
    assert resolve["status"] == 200 and resolve["method"] == "GET" and resolve["cache"] in ("HIT", "MISS", "REVALIDATED")
    assert resolve["bytes"] == len(fake_hub.file("org/model", "config.json")) and resolve["repo"] == "model:org/model"
    assert all(line["client"] == "127.0.0.0" for line in lines), {line["client"] for line in lines}
    assert any("hf_hub/" in line["user_agent"] for line in lines), "the client's own user-agent"

    mirror.stop()  # every line written, and the stderr log complete
    written = "".join(p.read_text(errors="replace") for p in (mirror.data_dir / "logs").iterdir()) + mirror.logs()
    for secret in SECRETS:
        assert secret not in written, f"{secret} was written"
    assert "127.0.0.1" not in "".join(p.read_text() for p in (mirror.data_dir / "logs").iterdir())
