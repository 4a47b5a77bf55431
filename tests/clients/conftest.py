"""Fixtures for the real-client suite.

Every fixture owns its own ports (port 0) and temp dirs, so tests are parallel-safe.

- `fake_hub`: tests/fakehub/fake_hub.py on 127.0.0.1:0 (+ CDN on 127.0.0.2:0).
- `mirror`: `$HF_MIRROR_BIN serve --listen 127.0.0.1:0 --data-dir <tmp> --upstream <fake> --ref-ttl 1s`,
  ready when it prints `node <NAME> http://127.0.0.1:<PORT>`; `mirror.restart()` keeps the data dir.
- `client`: runs a Python snippet with this venv's interpreter (sys.executable) in a subprocess with a
  fresh HF_HOME and a given HF_ENDPOINT (huggingface_hub reads its env at import time), and returns
  the snippet's `result` or the exception (class name, MRO, HTTP status) as JSON.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_HUB_SCRIPT = ROOT / "tests" / "fakehub" / "fake_hub.py"
VALID_TOKEN = "hf_valid_token"
OTHER_TOKEN = "hf_other_token"
STARTUP_TIMEOUT = 60.0

HUB_VERSION_STR = importlib.metadata.version("huggingface_hub")
HUB_VERSION = tuple(int(x) for x in re.findall(r"\d+", HUB_VERSION_STR)[:3])
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_HF_XET = importlib.util.find_spec("hf_xet") is not None
BIN_DIR = Path(sys.executable).parent

requires_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed in this venv")


def mirror_bin() -> Path:
    path = Path(os.environ.get("HF_MIRROR_BIN", "target/debug/hf-mirror"))
    return path if path.is_absolute() else ROOT / path


def pytest_report_header(config):
    return (f"huggingface_hub {HUB_VERSION_STR}; transformers: {HAS_TRANSFORMERS}; hf_xet: {HAS_HF_XET}; "
            f"mirror: {mirror_bin()}")


# ---------------------------------------------------------------------------------------------
# identities (hub-api §8)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def norm_etag(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


# ---------------------------------------------------------------------------------------------
# raw HTTP


class Response:
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.reason = reason
        self.header_list = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return ", ".join(values) if values else None

    def headers_named(self, name: str) -> list[str]:
        return [v for k, v in self.header_list if k.lower() == name.lower()]

    @property
    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.header_list:
            out[k.lower()] = out[k.lower()] + ", " + v if k.lower() in out else v
        return out

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:300]!r}>"


def http_request(base_url: str, method: str, path: str, headers: dict | None = None,
                 body: bytes | None = None, timeout: float = 120.0) -> Response:
    """One request with http.client: no redirect following, no decompression, raw path as given."""
    if path.startswith("http://"):
        parsed = urllib.parse.urlsplit(path)
        path = parsed.path + ("?" + parsed.query if parsed.query else "")
    else:
        parsed = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.reason, list(resp.getheaders()), data)
    finally:
        conn.close()


def raw_exchange(base_url: str, request: bytes, timeout: float = 30.0) -> Response | None:
    """Sends raw bytes (the request should say `Connection: close`), reads until EOF and parses one
    HTTP/1.1 response (Content-Length or chunked). None when the server closed without answering."""
    parsed = urllib.parse.urlsplit(base_url)
    data = b""
    with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading an oversized request
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if _complete(data):
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    if b"\r\n\r\n" not in data:
        return None
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
    resp = Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, b"")
    if (resp.header("Transfer-Encoding") or "").lower() == "chunked":
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2:]
        resp.body = body
    elif resp.header("Content-Length") is not None:
        resp.body = rest[:int(resp.header("Content-Length"))]
    else:
        resp.body = rest
    return resp


def _complete(data: bytes) -> bool:
    if b"\r\n\r\n" not in data:
        return False
    head, _, rest = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if m:
        return len(rest) >= int(m.group(1))
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        return rest.endswith(b"0\r\n\r\n")
    return False


def wait_for_line(proc: subprocess.Popen, log_path: Path, pattern: re.Pattern, what: str,
                  timeout: float = STARTUP_TIMEOUT) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        for line in text.splitlines():
            m = pattern.search(line)
            if m:
                return m
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{text[-4000:]}"
                               f"\n{_tail(log_path.with_suffix('.err'))}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout}s:\n{text[-4000:]}\n{_tail(log_path.with_suffix('.err'))}")
        time.sleep(0.05)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_until(predicate, what: str, timeout: float = 60.0):
    """Polls `predicate` until it returns something truthy, and returns that; fails after `timeout`.
    A bound on waiting, never an assertion about how long something took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# the fake Hub


class FakeHub:
    def __init__(self, workdir: Path, page_size: int = 3, big_size: int = 0):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "fakehub.out"
        big = ["--big-size", str(big_size), "--big-dir", str(workdir / "big")] if big_size else []
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_HUB_SCRIPT), "--port", "0", "--cdn-port", "0", "--page-size", str(page_size), *big],
            stdout=open(log, "wb"), stderr=open(log.with_suffix(".err"), "wb"), stdin=subprocess.DEVNULL,
            cwd=str(workdir),
        )
        m = wait_for_line(self.proc, log, re.compile(r"^fakehub (http://\S+) cdn (http://\S+)$"), "fake hub")
        self.url, self.cdn_url = m.group(1), m.group(2)
        self._state = None

    def stop(self) -> None:
        stop_process(self.proc)

    def request(self, method: str, path: str, **kw) -> Response:
        return http_request(self.url, method, path, **kw)

    def control(self, method: str, path: str) -> Response:
        resp = self.request(method, path)
        assert resp.status == 200, resp
        return resp

    def requests(self) -> list[dict]:
        return self.control("GET", "/_fake/requests").json()

    def reset(self) -> None:
        self.control("POST", "/_fake/reset")

    def bytes_sent(self) -> int:
        """File-body bytes the fake Hub and its CDN sent since the last reset."""
        counters = self.control("GET", "/_fake/bytes").json()
        return counters["hub"] + counters["cdn"]

    def move_branch(self, repo: str = "org/model", branch: str = "main") -> str:
        self._state = None
        q = urllib.parse.urlencode({"repo": repo, "branch": branch})
        return self.control("POST", f"/_fake/move-branch?{q}").json()["sha"]

    def down(self, on: bool) -> None:
        self.control("POST", f"/_fake/down?on={1 if on else 0}")

    def corrupt(self, on: bool) -> None:
        self.control("POST", f"/_fake/corrupt?on={1 if on else 0}")

    def throttle(self, bytes_per_sec: int) -> None:
        self.control("POST", f"/_fake/throttle?bytes_per_sec={bytes_per_sec}")

    def state(self, fresh: bool = False) -> dict:
        if self._state is None or fresh:
            self._state = self.control("GET", "/_fake/state").json()
        return self._state

    def repo_state(self, key: str) -> dict:
        """key: 'org/model', 'datasets/org/dataset', 'spaces/org/space'."""
        return self.state()["repos"][key]

    def sha(self, key: str = "org/model", ref: str = "main") -> str:
        return self.state(fresh=True)["repos"][key]["refs"][ref]

    def files(self, key: str = "org/model", ref: str = "main") -> dict[str, dict]:
        repo = self.repo_state(key)
        sha = repo["refs"].get(ref, ref)
        return repo["commits"][sha]["files"]

    def file(self, repo: str, path: str, rev: str = "main", repo_type: str = "model") -> bytes:
        q = urllib.parse.urlencode({"repo": repo, "path": path, "rev": rev, "type": repo_type})
        return self.control("GET", f"/_fake/file?{q}").body


@pytest.fixture
def fake_hub(tmp_path):
    hub = FakeHub(tmp_path / "fakehub")
    try:
        yield hub
    finally:
        hub.stop()


# ---------------------------------------------------------------------------------------------
# the mirror


class Mirror:
    _counter = itertools.count()

    def __init__(self, upstream: str, workdir: Path, ref_ttl: str = "1s", extra_args: list[str] | None = None,
                 listen: str = "127.0.0.1:0"):
        self.upstream = upstream
        self.listen = listen
        # A small page size, so every listing really follows the mirror's own Link pagination.
        self.extra_args = ["--tree-page-size", "4", *(extra_args or [])]
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ref_ttl = ref_ttl
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.name = ""
        self.start()

    def start(self) -> None:
        binary = mirror_bin()
        if not binary.exists():
            raise RuntimeError(f"mirror binary {binary} does not exist (set HF_MIRROR_BIN or build it)")
        n = next(self._counter)
        log = self.workdir / f"mirror-{n}.out"
        # Every node gets an operator port (status, drain, pins, metrics) unless the test picks one.
        operator = [] if "--metrics-listen" in self.extra_args else ["--operator-listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--listen", self.listen, "--data-dir", str(self.data_dir),
             "--upstream", self.upstream, "--ref-ttl", self.ref_ttl, *operator, *self.extra_args],
            stdout=open(log, "wb"), stderr=open(log.with_suffix(".err"), "wb"), stdin=subprocess.DEVNULL,
            cwd=str(self.workdir), env=clean_env(),
        )
        m = wait_for_line(self.proc, log, re.compile(r"^node (\w[\w.-]*) (http://127\.0\.0\.1:\d+)\s*$"), "mirror")
        self.name, self.url = m.group(1), m.group(2)
        self.log_path = log.with_suffix(".err")
        operator_lines = [line.split()[2] for line in log.read_text().splitlines() if line.startswith(f"operator {self.name} ")]
        self.operator_url = operator_lines[-1]
        self.token_file = self.data_dir / "operator-token"

    def operator_request(self, method: str, path: str, **kw) -> Response:
        """A request to the operator port with the operator token."""
        headers = {"Authorization": f"Bearer {self.token_file.read_text().strip()}", **kw.pop("headers", {})}
        return http_request(self.operator_url, method, path, headers=headers, **kw)

    def operator_args(self) -> list[str]:
        """`--url` and `--token-file` for an `hf-mirror` operator command."""
        return ["--url", self.operator_url, "--token-file", str(self.token_file)]

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def logs(self) -> str:
        """Everything every process of this mirror wrote on stderr."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("mirror-*.err")))

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def restart(self) -> None:
        """Stops the process and starts a new one on the same data dir (the port may change)."""
        self.stop()
        self.start()

    def request(self, method: str, path: str, **kw) -> Response:
        return http_request(self.url, method, path, **kw)

    def alive(self) -> bool:
        resp = self.request("HEAD", "/org/model/resolve/main/config.json")
        return resp.status == 200


def topology_mirror(upstream: str, workdir: Path, sections: str) -> Mirror:
    """A single node started from a topology file: one node, `solo`, with the given sections
    (`[rsync]`, `[limits]`, …) beside the required `[cluster]`."""
    workdir.mkdir(parents=True, exist_ok=True)
    topology = workdir / "topology.toml"
    topology.write_text(f"""
[cluster]
name = "solo-test"
zone = "mirror.test"

{sections}

[[nodes]]
name = "solo"
city = "Testing"
country = "DE"
operator = "tests"
latitude = 50.0
longitude = 8.0
bandwidth_gbps = 1
storage = "10GB"
""")
    return Mirror(upstream, workdir / "mirror", extra_args=["--config", str(topology)])


@pytest.fixture
def mirror(fake_hub, tmp_path):
    m = Mirror(fake_hub.url, tmp_path / "mirror")
    try:
        yield m
    finally:
        m.stop()


# ---------------------------------------------------------------------------------------------
# running real clients


STRIP_ENV = re.compile(r"^(HF_|HUGGINGFACE_|TRANSFORMERS_|HF_HUB_|.*_proxy$|.*_PROXY$)")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not STRIP_ENV.match(k)}


PRELUDE = '''\
import json, os, sys, hashlib
ARGS = json.loads(os.environ.get("CLIENT_ARGS") or "{}")

def file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()

def _describe(e):
    resp = getattr(e, "response", None)
    status = getattr(resp, "status_code", None) if resp is not None else None
    headers = {}
    try:
        headers = {k.lower(): v for k, v in dict(resp.headers).items()} if resp is not None else {}
    except Exception:
        pass
    return {"error": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
            "message": str(e)[:3000], "status": status, "headers": headers}

try:
__BODY__
    _out = {"ok": True, "result": result}
except BaseException as e:
    import traceback
    traceback.print_exc()
    _out = {"ok": False, **_describe(e)}
sys.stdout.write("\\n@@RESULT@@" + json.dumps(_out, default=str) + "\\n")
sys.stdout.flush()
'''


class ClientResult:
    def __init__(self, payload: dict, stdout: str, stderr: str, returncode: int):
        self.payload = payload
        self.stdout = stdout
        self.stderr = stderr
        self.returncode = returncode

    @property
    def ok(self) -> bool:
        return bool(self.payload.get("ok"))

    @property
    def result(self):
        assert self.ok, f"client raised {self.payload.get('error')}: {self.payload.get('message')}\n{self.stderr[-3000:]}"
        return self.payload["result"]

    @property
    def error(self) -> str | None:
        return self.payload.get("error")

    @property
    def mro(self) -> list[str]:
        return self.payload.get("mro") or []

    @property
    def status(self) -> int | None:
        return self.payload.get("status")

    def raised(self, class_name: str) -> bool:
        return not self.ok and class_name in self.mro

    def __repr__(self) -> str:
        return f"<ClientResult {self.payload!r} stderr={self.stderr[-2000:]!r}>"


class Client:
    """Runs snippets against an endpoint with a fresh HF_HOME per call (unless `home` is given)."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self._n = itertools.count()

    def new_home(self) -> Path:
        home = self.tmp_path / f"hf_home_{next(self._n)}"
        home.mkdir(parents=True)
        return home

    def env(self, endpoint: str, token: str | None = None, home: Path | None = None,
            disable_xet: bool = False, extra: dict | None = None) -> dict[str, str]:
        env = clean_env()
        home = home or self.new_home()
        env.update({
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "DISABLE_SAFETENSORS_CONVERSION": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            # if a client ever takes the Xet path (a mirror leaking Xet signals), fail fast on the
            # dead CAS instead of retrying for minutes; no effect on plain-HTTP downloads
            "HF_XET_CLIENT_RETRY_MAX_ATTEMPTS": "1",
            "HF_XET_CLIENT_RETRY_MAX_DURATION": "1s",
            "HF_XET_CLIENT_CONNECT_TIMEOUT": "2s",
        })
        if token:
            env["HF_TOKEN"] = token
        if disable_xet:
            env["HF_HUB_DISABLE_XET"] = "1"
        env.update(extra or {})
        return env

    def run(self, code: str, env: dict[str, str], args: dict | None = None, timeout: float = 300.0) -> ClientResult:
        body = textwrap.indent(textwrap.dedent(code).strip("\n"), "    ")
        script = PRELUDE.replace("__BODY__", body)
        env = dict(env)
        env["CLIENT_ARGS"] = json.dumps(args or {})
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=str(self.tmp_path))
        marker = "@@RESULT@@"
        lines = [l for l in proc.stdout.splitlines() if l.startswith(marker)]
        if not lines:
            raise AssertionError(f"client produced no result (rc={proc.returncode}):\n"
                                 f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-5000:]}")
        return ClientResult(json.loads(lines[-1][len(marker):]), proc.stdout, proc.stderr, proc.returncode)

    def cli(self, argv: list[str], env: dict[str, str], timeout: float = 300.0) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(self.tmp_path))


@pytest.fixture
def client(tmp_path):
    return Client(tmp_path / "clients")


def hf_cli() -> list[str]:
    """The download CLI of this version: `hf` (0.34+), else `huggingface-cli`."""
    hf = BIN_DIR / "hf"
    if hf.exists():
        return [str(hf)]
    return [str(BIN_DIR / "huggingface-cli")]


def legacy_cli() -> list[str] | None:
    """`huggingface-cli` where it is the real CLI (0.x); 1.x keeps only a deprecation stub."""
    path = BIN_DIR / "huggingface-cli"
    if HUB_VERSION < (1, 0, 0) and path.exists():
        return [str(path)]
    return None


def cli_path(stdout: str) -> Path:
    """The path a `download` command printed: its last line (0.x/1.x), or `path: …` (2.x)."""
    lines = [l.strip() for l in stdout.strip().splitlines() if l.strip()]
    for line in reversed(lines):
        if line.startswith("path:"):
            return Path(line[len("path:"):].strip())
    return Path(lines[-1])


def is_remote_entry_not_found(res: ClientResult) -> bool:
    """0.x: EntryNotFoundError; 1.x/2.x: RemoteEntryNotFoundError. LocalEntryNotFoundError is not."""
    return (not res.ok and "EntryNotFoundError" in res.mro and "LocalEntryNotFoundError" not in res.mro
            and "HfHubHTTPError" in res.mro)


def files_under(root: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".cache/"):
            out[rel] = path.read_bytes()
    return out


# ---------------------------------------------------------------------------------------------
# shared snippets and mirror fixtures

# ARGS["files"]: [{"repo", "path", "revision", "repo_type"}] -> {"repo:path@revision": local path}
DOWNLOAD_MANY = """
from huggingface_hub import hf_hub_download
paths = {}
for spec in ARGS["files"]:
    key = spec.get("repo", "org/model") + ":" + spec["path"] + "@" + str(spec.get("revision"))
    paths[key] = hf_hub_download(spec.get("repo", "org/model"), spec["path"], revision=spec.get("revision"),
                                 repo_type=spec.get("repo_type"))
result = paths
"""

DOWNLOAD_ONE = """
from huggingface_hub import hf_hub_download
result = hf_hub_download(ARGS["repo"], ARGS["path"], revision=ARGS.get("revision"), repo_type=ARGS.get("repo_type"))
"""

SNAPSHOT = """
from huggingface_hub import snapshot_download
result = snapshot_download(ARGS.get("repo", "org/model"), revision=ARGS.get("revision"), repo_type=ARGS.get("repo_type"))
"""


def key(path: str, repo: str = "org/model", revision: str | None = None) -> str:
    return f"{repo}:{path}@{revision}"


@pytest.fixture
def via_mirror(mirror, client):
    """env factory: clients talking to the mirror. hf_xet stays installed and HF_HUB_DISABLE_XET is
    NOT set, so any leaked Xet signal breaks the download."""
    def make(token: str | None = None, home: Path | None = None, extra: dict | None = None) -> dict[str, str]:
        return client.env(mirror.url, token=token, home=home, extra=extra)
    return make


def upstream_blob_requests(log: list[dict]) -> list[dict]:
    """Upstream requests that move file bytes or file metadata: hub /resolve/ and any CDN request."""
    return [r for r in log if r["server"] == "cdn" or "/resolve/" in r["path"]]


def parse_range_header(value: str | None, size: int) -> tuple[int, int]:
    """(start, end_exclusive) a GET with this Range header asks for; whole body without one."""
    if not value:
        return 0, size
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
    assert m, f"unexpected Range {value!r}"
    if m.group(1) == "":
        return size - int(m.group(2)), size
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    return start, min(end, size)
