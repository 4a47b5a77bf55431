"""Connection-level limits and trusted proxies, checked from outside with raw sockets and a real
HAProxy: a half-sent header and an idle connection are closed, connections are bounded per client
network, HTTP/2 announces its stream bound, and only a trusted proxy may name the client (PROXY
protocol v2 or X-Forwarded-For) — which then gets its own limits."""

import shutil
import socket
import subprocess
import pytest

from conftest import topology_mirror, wait_until

CONFIG = "/org/model/resolve/main/config.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
    return sock


def closed_by_server(sock: socket.socket, within: float = 30.0) -> bool:
    """Reads until the server closes the connection (EOF or reset); False if it stays open."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def get_over(sock: socket.socket, path: str = CONFIG, extra: str = "") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: mirror\r\n{extra}\r\n".encode())
    sock.settimeout(30)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            break
        head += chunk
    return head


@pytest.fixture
def strict(fake_hub, tmp_path):
    mirror = topology_mirror(fake_hub.url, tmp_path, """[limits]
header_timeout = "2s"
idle_timeout = "2s"
connections_per_client = 4
streams_per_connection = 7
""")
    try:
        yield mirror
    finally:
        mirror.stop()


def test_a_half_sent_header_is_closed(strict):
    sock = connect(strict.url)
    sock.sendall(b"GET /org/model/resolve/main/config.json HTTP/1.1\r\nHost: mirror\r\nX-Slow: ")
    assert closed_by_server(sock), "a connection that never finishes its headers must be closed"


def test_a_connection_that_says_nothing_is_closed(strict):
    sock = connect(strict.url)
    assert closed_by_server(sock)


def test_an_idle_keep_alive_connection_is_closed(strict):
    sock = connect(strict.url)
    head = get_over(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert closed_by_server(sock), "an HTTP/1.1 connection idle between requests must be closed"


def test_connections_are_bounded_per_client(strict):
    held = [connect(strict.url) for _ in range(4)]
    for sock in held:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: mirror\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    fifth = connect(strict.url)
    fifth.sendall(b"GET /healthz HTTP/1.1\r\nHost: mirror\r\n\r\n")
    assert closed_by_server(fifth, within=10), "a fifth connection from the same address is over the bound"
    # Another address is another client.
    other = connect(strict.url, source="127.0.0.2")
    assert get_over(other, "/healthz").startswith(b"HTTP/1.1 200")
    for sock in held:
        sock.close()

    def answered_again() -> bool:
        # Until the node has seen the closes, a new connection is still over the bound (reset).
        try:
            with connect(strict.url) as sock:
                return get_over(sock, "/healthz").startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    wait_until(answered_again, "a slot to free up", timeout=30)


def test_http2_announces_its_stream_bound(strict):
    sock = connect(strict.url)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # preface + empty SETTINGS
    sock.settimeout(10)
    frame = b""
    while len(frame) < 9:
        frame += sock.recv(9 - len(frame))
    length, kind = int.from_bytes(frame[:3], "big"), frame[3]
    assert kind == 4, "the server's first frame is SETTINGS"
    payload = b""
    while len(payload) < length:
        payload += sock.recv(length - len(payload))
    settings = {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big") for i in range(0, length, 6)}
    assert settings.get(0x3) == 7, settings  # SETTINGS_MAX_CONCURRENT_STREAMS


# ------------------------------------------------------------------------------------------------
# Trusted proxies: HAProxy sends PROXY v2 from 127.0.0.3; clients come from 127.0.0.2 and 127.0.0.4.

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


@pytest.fixture
def proxied(fake_hub, tmp_path):
    """A node whose only trusted proxy is 127.0.0.3, with a tight limit for every loopback client,
    behind a real HAProxy (TCP mode, `send-proxy-v2`, source 127.0.0.3)."""
    mirror = topology_mirror(fake_hub.url, tmp_path, """[limits]
trusted_proxies = ["127.0.0.3/32"]

[[limits.allow]]
prefix = "127.0.0.0/8"
requests_per_second = 0.5
burst = 3
""")
    port = free_port()
    node_port = mirror.url.rsplit(":", 1)[1]
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""
global
    log stderr format raw local0 err
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend mirror
    bind 127.0.0.1:{port}
    default_backend node
backend node
    server node 127.0.0.1:{node_port} send-proxy-v2 source 127.0.0.3
""")
    proc = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=open(tmp_path / "haproxy.out", "wb"),
                            stderr=open(tmp_path / "haproxy.err", "wb"), stdin=subprocess.DEVNULL)
    proxy_url = f"http://127.0.0.1:{port}"

    def proxy_up():
        try:
            connect(proxy_url).close()
            return True
        except OSError:
            return False

    try:
        wait_until(proxy_up, "HAProxy to listen", timeout=30)
        yield mirror, proxy_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        mirror.stop()


def status_after(url: str, source: str, count: int) -> list[int]:
    answers = []
    for _ in range(count):
        sock = connect(url, source=source)
        head = get_over(sock, "/api/models/org/model", "Connection: close\r\n")
        answers.append(int(head.split(b" ", 2)[1]) if head else 0)
        sock.close()
    return answers


def test_haproxy_names_each_client_and_each_gets_its_own_limits(proxied):
    mirror, proxy_url = proxied
    first = status_after(proxy_url, "127.0.0.2", 6)
    assert first[:3] == [200, 200, 200] and 429 in first[3:], first
    # Another client through the same proxy is not charged for the first one's requests.
    assert status_after(proxy_url, "127.0.0.4", 3) == [200, 200, 200]
    # The access log keeps the clients' (anonymised) addresses, never the proxy's.
    wait_until(lambda: list((mirror.data_dir / "logs").glob("access-*.jsonl")), "the access log")
    text = "".join(p.read_text() for p in (mirror.data_dir / "logs").glob("access-*.jsonl"))
    assert '"127.0.0.0"' in text


def test_only_a_trusted_proxy_may_name_the_client(proxied):
    mirror, _ = proxied
    # From an untrusted address a PROXY header is not believed: it is not HTTP, and is refused.
    sock = connect(mirror.url, source="127.0.0.5")
    sock.sendall(b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 80\r\nGET /api/models/org/model HTTP/1.1\r\nHost: m\r\n\r\n")
    answer = b""
    sock.settimeout(10)
    try:
        answer = sock.recv(4096)
    except OSError:
        pass
    assert not answer.startswith(b"HTTP/1.1 200"), answer
    # X-Forwarded-For from an untrusted address changes nothing: the client keeps its own limits.
    answers = []
    for n in range(6):
        sock = connect(mirror.url, source="127.0.0.6")
        head = get_over(sock, "/api/models/org/model", f"X-Forwarded-For: 203.0.113.{n}\r\nConnection: close\r\n")
        answers.append(int(head.split(b" ", 2)[1]))
    assert 429 in answers, answers
    # From the trusted proxy's address, X-Forwarded-For names the client.
    named = []
    for n in range(3):
        sock = connect(mirror.url, source="127.0.0.3")
        head = get_over(sock, "/api/models/org/model", f"X-Forwarded-For: 127.0.0.{10 + n}\r\nConnection: close\r\n")
        named.append(int(head.split(b" ", 2)[1]))
    assert named == [200, 200, 200], named


def test_links_carry_the_scheme_the_client_used(proxied):
    mirror, _ = proxied
    path = "/api/models/org/model/tree/main?recursive=true"
    # Plain HTTP: http links (the fixture's tree pages are 4 entries, so there is a next page).
    sock = connect(mirror.url, source="127.0.0.7")
    head = get_over(sock, path, "Connection: close\r\n").decode()
    assert "link: <http://" in head.lower(), head
    # Through a TLS-terminating trusted proxy that says so: https links.
    sock = connect(mirror.url, source="127.0.0.3")
    head = get_over(sock, path, "X-Forwarded-For: 127.0.0.8\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n").decode()
    assert "link: <https://" in head.lower(), head
    # From anyone else the header is ignored.
    sock = connect(mirror.url, source="127.0.0.9")
    head = get_over(sock, path, "X-Forwarded-Proto: https\r\nConnection: close\r\n").decode()
    assert "link: <http://" in head.lower(), head
