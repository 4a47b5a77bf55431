"""The mirror's own public pages (issue 15): `/` and `/status` as server-rendered HTML without
scripts, cookies or third-party assets, the same facts as JSON on request, the operator's `[site]`
texts (escaped), and no change to any Hub route. The browser check of a four-node cluster is in
test_site_browser.py."""

import re
from html.parser import HTMLParser

import pytest

from conftest import topology_mirror


class Page(HTMLParser):
    """The parts of a page these tests look at."""

    def __init__(self):
        super().__init__()
        self.scripts = 0
        self.loads = []  # URLs the page would load (src, stylesheet links)
        self.rows = {}  # table id -> [(data-node, data-state)]
        self.links = []
        self.text = []
        self._table = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if "src" in attrs:
            self.loads.append(attrs["src"])
        if tag == "link" and attrs.get("rel") == "stylesheet":
            self.loads.append(attrs.get("href"))
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "table":
            self._table = attrs.get("id")
            self.rows.setdefault(self._table, [])
        if tag == "tr" and "data-node" in attrs and self._table is not None:
            self.rows[self._table].append((attrs["data-node"], attrs["data-state"]))

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)


def parse(body: bytes) -> Page:
    page = Page()
    page.feed(body.decode())
    return page


HOSTILE = '<script>alert(1)</script>'


@pytest.fixture
def site_node(fake_hub, tmp_path):
    mirror = topology_mirror(fake_hub.url, tmp_path, f"""
[site]
title = "Mirror {HOSTILE}"
operator = "Example e.V."
contact = "ops@example.org"
terms = "Be nice. {HOSTILE}"
privacy = "We keep little."
""")
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.mark.parametrize("path,table", [("/", "peers"), ("/status", "nodes")])
def test_pages_are_plain_html_without_scripts_or_cookies(site_node, path, table):
    answer = site_node.request("GET", path, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert answer.status == 200, answer
    assert answer.header("Content-Type") == "text/html; charset=utf-8"
    assert answer.header("Set-Cookie") is None
    assert "script-src" not in (answer.header("Content-Security-Policy") or "x") and "default-src 'none'" in answer.header("Content-Security-Policy")
    page = parse(answer.body)
    assert page.scripts == 0, "no script, not even the operator's text"
    assert page.loads == [], f"no asset loaded from anywhere: {page.loads}"
    assert page.rows[table] == [("solo", "live")]
    assert b'<meta name="viewport"' in answer.body
    head = site_node.request("HEAD", path)
    assert head.status == 200 and head.body == b"" and int(head.header("Content-Length")) == len(answer.body)


def test_the_operators_texts_are_shown_escaped(site_node):
    page = site_node.request("GET", "/")
    text = "".join(parse(page.body).text)
    assert "Example e.V." in text and "Be nice." in text and "We keep little." in text
    assert HOSTILE in text, "shown as text"
    assert HOSTILE.encode() not in page.body, "never as markup"
    assert b'href="mailto:ops@example.org"' in page.body
    assert site_node.url in text, "the endpoint to put in HF_ENDPOINT"


def test_the_same_facts_as_json(site_node):
    home = site_node.request("GET", "/", headers={"Accept": "application/json"})
    assert home.status == 200 and home.header("Content-Type").startswith("application/json")
    facts = home.json()
    assert [(p["name"], p["state"], p["city"]) for p in facts["peers"]] == [("solo", "live", "Testing")]
    assert facts["operator"] == "Example e.V." and facts["endpoint"] == site_node.url
    assert facts["limits"]["cold_fills_per_client"] > 0
    status = site_node.request("GET", "/status", headers={"Accept": "application/json"}).json()
    assert [(n["name"], n["state"]) for n in status["nodes"]] == [("solo", "live")]
    assert "figures" in status["nodes"][0] and isinstance(status["top_repositories"], list)


def test_status_counts_what_was_served(site_node, fake_hub):
    for _ in range(3):
        assert site_node.request("GET", "/org/model/resolve/main/model.safetensors").status == 200
    node = site_node.request("GET", "/status", headers={"Accept": "application/json"}).json()["nodes"][0]
    size = len(fake_hub.file("org/model", "model.safetensors"))
    assert node["figures"]["fetched_from_upstream"] >= size
    assert node["figures"]["served_from_disk"] >= 2 * size
    assert node["figures"]["misses"] >= 1 and node["figures"]["hits"] >= 2
    assert node["figures"]["stored_bytes"] >= size


def test_hub_routes_are_unchanged_and_pages_are_read_only(site_node, fake_hub):
    assert site_node.request("POST", "/").status == 405
    assert site_node.request("DELETE", "/status").status == 405
    info = site_node.request("GET", "/api/models/org/model")
    assert info.status == 200 and info.json()["sha"] == fake_hub.sha()
    assert site_node.request("HEAD", "/org/model/resolve/main/config.json").status == 200
    missing = site_node.request("GET", "/status/resolve/main/x")
    assert missing.header("Content-Type").startswith("application/json"), "Hub answers stay in the Hub's format"
