"""The mirror's public site in a real browser: headless Chromium (Debian `chromium`, installed by
scripts/test-all.sh) loads `/` and `/status` from a four-node `hf-mirror cluster up`.

The contract the pages are tested against:
- `GET /` and `GET /status` on every node's public port: server-rendered HTML
  (`text/html; charset=utf-8`, a `width=device-width` viewport for phones), no JavaScript, no
  cookies (no Set-Cookie), nothing loaded from a third party (every src/href that loads something is
  relative or on the node's own origin; Chromium's net log shows what the page really fetched).
- `/` has `<table id="peers">`, `/status` has `<table id="nodes">`; each has one
  `<tr data-node="NAME" data-state="live|draining|dead">` per node of topology.toml.
- With `Accept: application/json` the same paths answer JSON: `/` → `{"peers": [{"name", "state"}, …]}`,
  `/status` → `{"nodes": [{"name", "state"}, …]}`.

Chromium's DOM shows four peers live; a node killed (SIGKILL) shows as `dead` once the others have
noticed (a bounded wait, never a timing claim), a drained node as `draining`. Screenshots at desktop
(1280×900) and phone (390×844) size, and of the whole page at both widths, are saved under
target/test-output/site/ (or $HF_MIRROR_BUILD_DIR/test-output/site/) and their paths printed.

The suite does not use huggingface_hub, so run.sh runs it in one venv only.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import ROOT, FakeHub, clean_env, http_request
from test_cluster import Cluster

pytestmark = pytest.mark.skipif(os.environ.get("HF_MIRROR_RUN_ONCE", "1") != "1",
                                reason="runs in one venv only (run.sh's ONCE_VENV): it does not use huggingface_hub")

STATES = {"live", "draining", "dead"}
DESKTOP = (1280, 900)
PHONE = (390, 844)
DESKTOP_FULL = (1280, 2800)
PHONE_FULL = (390, 7000)
# How long the survivors may take to call a killed node dead: a bound on waiting, not a claim.
DEAD_WITHIN = 180.0
# Attributes that make a browser load something (an <a href> only navigates when clicked).
LOADING_ATTRS = {"src", "srcset", "poster", "data", "background", "manifest", "imagesrcset"}


def topology_names() -> list[str]:
    with open(ROOT / "topology.toml", "rb") as f:
        return [node["name"] for node in tomllib.load(f)["nodes"]]


def output_dir() -> Path:
    build = Path(os.environ.get("HF_MIRROR_BUILD_DIR", "target"))
    build = build if build.is_absolute() else ROOT / build
    out = build / "test-output" / "site"
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------------------------------------
# headless Chromium


class Browser:
    """Runs Debian's chromium headless: one fresh profile (--user-data-dir) per run, bounded by timeout."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("chromium")
        if self.binary is None:
            pytest.fail("chromium is not installed: scripts/test-all.sh installs the Debian package `chromium`",
                        pytrace=False)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._n = itertools.count()

    def run(self, args: list[str], url: str) -> subprocess.CompletedProcess:
        profile = self.workdir / f"profile-{next(self._n)}"
        argv = ["timeout", "60", self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-dev-shm-usage", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars",
                # Only loopback resolves: the browser's own background calls (update checks, account
                # probes) go nowhere, and neither would a third-party asset.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={profile}", *args, url]
        env = clean_env() | {"HOME": str(self.workdir)}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, env=env, cwd=str(self.workdir))
        shutil.rmtree(profile, ignore_errors=True)
        assert proc.returncode == 0, f"chromium failed (rc={proc.returncode}) on {url}:\n{proc.stderr[-3000:]}"
        return proc

    def dom(self, url: str) -> str:
        dom = self.run(["--dump-dom"], url).stdout
        assert dom.strip(), f"chromium dumped an empty DOM for {url}"
        return dom

    def visit(self, url: str) -> tuple[str, list[str]]:
        """The DOM of `url`, and every URL the page made the browser request (from Chromium's net log:
        requests keyed to the page's site; the browser's own background calls are keyed otherwise)."""
        net_log = self.workdir / f"netlog-{next(self._n)}.json"
        dom = self.run(["--dump-dom", f"--log-net-log={net_log}"], url).stdout
        assert dom.strip(), f"chromium dumped an empty DOM for {url}"
        log = json.loads(net_log.read_text())
        start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        parts = urllib.parse.urlsplit(url)
        site = f"{parts.scheme}://{parts.hostname}"
        requested = []
        for event in log["events"]:
            params = event.get("params") or {}
            if event["type"] == start_job and "url" in params and site in params.get("network_isolation_key", "").split():
                requested.append(params["url"])
        assert url in requested, f"the net log does not show the page's own request for {url}: {requested}"
        return dom, requested

    def screenshot(self, url: str, path: Path, size: tuple[int, int]) -> Path:
        path.unlink(missing_ok=True)
        self.run([f"--screenshot={path}", f"--window-size={size[0]},{size[1]}"], url)
        data = path.read_bytes() if path.exists() else b""
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, f"no screenshot of {url} at {path}"
        print(f"screenshot {size[0]}x{size[1]} of {url}: {path}")
        return path


# ---------------------------------------------------------------------------------------------
# the DOM


class Page(HTMLParser):
    """What the tests need from a page: every element's attributes, the text of <style> blocks, and
    the `tr[data-node]` rows of each table by the table's id."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self.tables: dict[str, list[dict[str, str]]] = {}
        self._table_ids: list[str | None] = []
        self._in_style = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = {k.lower(): (v or "") for k, v in attrs}
        self.elements.append((tag, attributes))
        if tag == "table":
            self._table_ids.append(attributes.get("id"))
            if attributes.get("id"):
                self.tables.setdefault(attributes["id"], [])
        elif tag == "tr" and "data-node" in attributes and self._table_ids and self._table_ids[-1]:
            self.tables[self._table_ids[-1]].append(attributes)
        elif tag == "style":
            self._in_style = True

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag == "table":
            self._table_ids.pop()
        if tag == "style":
            self._in_style = False

    def handle_endtag(self, tag):
        if tag == "table" and self._table_ids:
            self._table_ids.pop()
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)

    def states(self, table_id: str) -> dict[str, str]:
        assert table_id in self.tables, f'no <table id="{table_id}"> in the page'
        rows = self.tables[table_id]
        names = [row["data-node"] for row in rows]
        assert len(names) == len(set(names)), f"a node has more than one row in #{table_id}: {names}"
        for row in rows:
            assert row.get("data-state") in STATES, f"#{table_id} row {row}: data-state not one of {sorted(STATES)}"
        return {row["data-node"]: row["data-state"] for row in rows}


def css_urls(text: str) -> list[str]:
    found = re.findall(r"""url\(\s*['"]?([^'")]+)['"]?\s*\)""", text, flags=re.I)
    found += re.findall(r"""@import\s+['"]([^'"]+)['"]""", text, flags=re.I)
    return found


def assert_page_hygiene(html: str, page_url: str) -> None:
    """No JavaScript, nothing loaded from another origin."""
    page = Page(html)
    origin = urllib.parse.urlsplit(page_url)[:2]
    problems = []
    loads: list[tuple[str, str]] = []
    for tag, attrs in page.elements:
        if tag == "script":
            problems.append(f"a <script> element: {attrs}")
        for name, value in attrs.items():
            if name.startswith("on"):
                problems.append(f"an event handler <{tag} {name}=…>")
            if value.strip().lower().startswith("javascript:"):
                problems.append(f"a javascript: URL in <{tag} {name}>")
            if name in LOADING_ATTRS and value:
                urls = [part.strip().split()[0] for part in value.split(",") if part.strip()] if "srcset" in name else [value]
                loads += [(f"<{tag} {name}>", u) for u in urls]
            if name == "style":
                loads += [(f"<{tag} style>", u) for u in css_urls(value)]
        if tag in ("link", "base") and attrs.get("href"):
            loads.append((f"<{tag} rel={attrs.get('rel')!r} href>", attrs["href"]))
        if tag == "meta" and attrs.get("http-equiv", "").lower() == "refresh":
            problems.append(f"a meta refresh: {attrs}")
    loads += [("<style>", u) for text in page.styles for u in css_urls(text)]
    for where, ref in loads:
        ref = ref.strip()
        if ref.startswith("data:"):
            continue  # inline: nothing is fetched
        absolute = urllib.parse.urljoin(page_url, ref)
        if urllib.parse.urlsplit(absolute)[:2] != origin:
            problems.append(f"{where} loads {ref!r} from another origin")
    assert not problems, f"{page_url}:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# HTTP, without a browser


def assert_html_answer(url: str, path: str) -> None:
    r = http_request(url, "GET", path, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert r.status == 200, (url, path, r)
    content_type = (r.header("Content-Type") or "").lower().replace(" ", "")
    assert content_type == "text/html;charset=utf-8", (url, path, r.header("Content-Type"))
    assert not r.headers_named("Set-Cookie"), (url, path, r.headers_named("Set-Cookie"))
    html = r.body.decode("utf-8")
    assert_page_hygiene(html, url + path)
    # Readable on a phone: laid out for the device's width, not a zoomed-out desktop page.
    viewports = [attrs.get("content", "") for tag, attrs in Page(html).elements
                 if tag == "meta" and attrs.get("name", "").lower() == "viewport"]
    assert any("width=device-width" in v.replace(" ", "") for v in viewports), (url, path, viewports)


def json_states(url: str, path: str) -> dict[str, str]:
    key = {"/": "peers", "/status": "nodes"}[path]
    r = http_request(url, "GET", path, headers={"Accept": "application/json"})
    assert r.status == 200, (url, path, r)
    assert (r.header("Content-Type") or "").lower().startswith("application/json"), (url, path, r.header("Content-Type"))
    assert not r.headers_named("Set-Cookie"), (url, path, r.headers_named("Set-Cookie"))
    entries = r.json()[key]
    states = {entry["name"]: entry["state"] for entry in entries}
    assert len(states) == len(entries), f"a node is listed twice in {path}'s {key}: {entries}"
    return states


def poll(predicate, what: str, timeout: float, interval: float = 1.0):
    """Calls `predicate` until it returns something truthy (a bound on waiting, not a timing claim);
    fails with the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        ok, last = predicate()
        if ok:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {last}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def site_cluster(tmp_path):
    hub = FakeHub(tmp_path / "fakehub")
    cluster = None
    try:
        cluster = Cluster(hub.url, tmp_path / "cluster")
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        hub.stop()


@pytest.fixture
def browser(tmp_path):
    return Browser(tmp_path / "chromium")


def descendant_of(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def kill_node(cluster: Cluster, name: str) -> None:
    """SIGKILL one node process, which `cluster up` (started by this test) started."""
    pid = cluster.node_pid(name)
    assert descendant_of(pid, cluster.proc.pid), f"process {pid} is not a node of this test's cluster"
    os.kill(pid, signal.SIGKILL)


def dom_states(browser: Browser, url: str, path: str) -> dict[str, str]:
    return Page(browser.dom(url + path)).states({"/": "peers", "/status": "nodes"}[path])


def screenshots(browser: Browser, url: str, phase: str) -> list[Path]:
    out = output_dir()
    shots = []
    # The first screen at each width, and the whole page (a window taller than the page: the peer
    # table is below the fold of `/`, and headless screenshots ignore a `#peers` fragment's scroll).
    for path, page in (("/", "index"), ("/status", "status")):
        for size, device in ((DESKTOP, "desktop"), (PHONE, "phone"), (DESKTOP_FULL, "desktop-full"), (PHONE_FULL, "phone-full")):
            shots.append(browser.screenshot(url + path, out / f"{phase}-{page}-{device}.png", size))
    return shots


# ---------------------------------------------------------------------------------------------
# tests


def test_every_node_serves_the_site_and_chromium_shows_four_live_peers_then_a_killed_one_dead(site_cluster, browser):
    cluster = site_cluster
    names = topology_names()
    assert len(names) == 4 and sorted(cluster.nodes) == sorted(names), (names, cluster.nodes)
    all_live = {name: "live" for name in names}

    # Every node: the HTML answers (type, no cookie, no script, no third party) and the JSON ones.
    for name, url in cluster.nodes.items():
        for path in ("/", "/status"):
            assert_html_answer(url, path)
            poll(lambda: (lambda s: (s == all_live, s))(json_states(url, path)), f"{name}{path} JSON: four live", timeout=60)

    # Chromium's DOM on every node: four peers, all live, on both pages; everything the browser
    # fetched for the page came from the node itself.
    for name, url in cluster.nodes.items():
        for path in ("/", "/status"):
            html, requested = browser.visit(url + path)
            assert_page_hygiene(html, url + path)
            elsewhere = [u for u in requested if urllib.parse.urlsplit(u)[:2] != urllib.parse.urlsplit(url)[:2]]
            assert not elsewhere, f"{url}{path} made the browser fetch from another origin: {elsewhere}"
            table = {"/": "peers", "/status": "nodes"}[path]
            assert Page(html).states(table) == all_live, (name, path)

    observer, victim = sorted(names)[0], sorted(names)[-1]
    survivors = [name for name in names if name != victim]
    screenshots(browser, cluster.nodes[observer], "live")

    kill_node(cluster, victim)
    expected = {name: ("dead" if name == victim else "live") for name in names}
    observer_url = cluster.nodes[observer]
    poll(lambda: (lambda s: (s == expected, s))(dom_states(browser, observer_url, "/")),
         f"{observer}'s / in Chromium to show {victim} dead", timeout=DEAD_WITHIN)
    poll(lambda: (lambda s: (s == expected, s))(dom_states(browser, observer_url, "/status")),
         f"{observer}'s /status in Chromium to show {victim} dead", timeout=DEAD_WITHIN)
    for name in survivors:
        url = cluster.nodes[name]
        for path in ("/", "/status"):
            poll(lambda: (lambda s: (s == expected, s))(json_states(url, path)),
                 f"{name}{path} JSON to show {victim} dead", timeout=DEAD_WITHIN)
    screenshots(browser, observer_url, "one-dead")


def test_a_drained_node_shows_as_draining(site_cluster, browser):
    cluster = site_cluster
    names = topology_names()
    drained = sorted(names)[1]
    observer = next(name for name in sorted(names) if name != drained)
    r = cluster.operator(drained, "POST", "/_hfm/drain", timeout=120)
    assert r.status == 200, r
    expected = {name: ("draining" if name == drained else "live") for name in names}
    url = cluster.nodes[observer]
    for path in ("/", "/status"):
        poll(lambda: (lambda s: (s == expected, s))(dom_states(browser, url, path)),
             f"{observer}'s {path} in Chromium to show {drained} draining", timeout=60)
    # The drained node still serves its pages, and says so about itself.
    for path in ("/", "/status"):
        assert_html_answer(cluster.nodes[drained], path)
        poll(lambda: (lambda s: (s == expected, s))(json_states(cluster.nodes[drained], path)),
             f"{drained}{path} JSON to show itself draining", timeout=60)
    screenshots(browser, url, "one-draining")
