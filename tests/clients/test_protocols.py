"""HTTP/1.1 and HTTP/2, cleartext (h2c by prior knowledge) and TLS (ALPN) on one port: the same
bytes and Hub headers on every protocol (curl), a real client over HTTPS, and a certificate reloaded
on SIGHUP without dropping a transfer in progress."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import Mirror, clean_env, mirror_bin, wait_until

HEADERS = ("x-repo-commit", "etag", "x-linked-etag", "x-linked-size", "content-length", "content-range", "accept-ranges", "x-cache")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory):
    """A test CA: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.pem", directory / "ca.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
            "-out", str(cert), "-days", "2", "-subj", "/CN=hf-mirror test CA")
    return cert, key


def make_certificate(directory, name: str):
    """A server certificate for 127.0.0.1 and localhost, issued by the test CA, with subject CN=name."""
    cert, key, request = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr"
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
            "-out", str(request), "-subj", f"/CN={name}")
    extensions = directory / f"{name}.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                          "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", str(request), "-CA", str(directory / "ca.pem"), "-CAkey", str(directory / "ca.key"),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions))
    return cert, key


@pytest.fixture
def tls_mirror(fake_hub, tmp_path):
    certs = tmp_path / "certs"
    ca, _ = make_ca(certs)
    cert, key = make_certificate(certs, "first-cert")
    live_cert, live_key = certs / "live.pem", certs / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    mirror = Mirror(fake_hub.url, tmp_path / "mirror", extra_args=["--tls-cert", str(live_cert), "--tls-key", str(live_key)])
    mirror.https_url = mirror.url.replace("http://", "https://")
    mirror.ca = ca
    mirror.certs = certs
    try:
        yield mirror
    finally:
        mirror.stop()


def curl(url: str, *args: str, ca=None) -> tuple[str, dict, bytes]:
    """(http version, headers, body) of one GET."""
    command = ["curl", "-sS", "--fail-with-body", "-D", "-", "-o", "/dev/stdout", "-w", "\n%{http_version}", *args, url]
    if ca is not None:
        command[1:1] = ["--cacert", str(ca)]
    out = subprocess.run(command, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    raw, _, version = out.stdout.rpartition(b"\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return version.decode(), headers, body


def h3_get(url: str, ca, output, *headers: str) -> tuple[str, dict, bytes]:
    """(version, headers, body) of one GET over HTTP/3, with the node's own client (curl has none)."""
    command = [str(mirror_bin()), "h3-get", url, "--cacert", str(ca), "-o", str(output)]
    for header in headers:
        command += ["-H", header]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_env())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("HTTP/3 2"), out.stdout
    parsed = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        parsed[name.lower()] = value
    return "3", parsed, output.read_bytes()


@pytest.mark.parametrize("range_header", [None, "bytes=1000-2999"])
def test_every_protocol_gives_the_same_bytes_and_hub_headers(tls_mirror, fake_hub, range_header, tmp_path):
    path = "/org/model/resolve/main/model.safetensors"
    expected = fake_hub.file("org/model", "model.safetensors")
    extra = ["-H", f"Range: {range_header}"] if range_header else []
    # Warm: the whole file is stored before the comparison, so every answer below is a HIT with the
    # same headers (a first range alone would leave the fill running in the background).
    curl(tls_mirror.url + path)
    wait_until(lambda: curl(tls_mirror.url + path, *extra)[1].get("x-cache") == "HIT", "the blob to be stored", timeout=30)
    answers = {
        "h1": curl(tls_mirror.url + path, "--http1.1", *extra),
        "h2c": curl(tls_mirror.url + path, "--http2-prior-knowledge", *extra),
        "h1+tls": curl(tls_mirror.https_url + path, "--http1.1", *extra, ca=tls_mirror.ca),
        "h2+tls": curl(tls_mirror.https_url + path, "--http2", *extra, ca=tls_mirror.ca),
        "h3": h3_get(tls_mirror.https_url + path, tls_mirror.ca, tmp_path / "h3.bin", *([f"Range: {range_header}"] if range_header else [])),
    }
    versions = {name: version for name, (version, _, _) in answers.items()}
    assert versions == {"h1": "1.1", "h2c": "2", "h1+tls": "1.1", "h2+tls": "2", "h3": "3"}
    # HTTP/3 runs on the same port number and is advertised while it does.
    port = tls_mirror.url.rsplit(":", 1)[1]
    assert answers["h2+tls"][1].get("alt-svc") == f'h3=":{port}"; ma=86400'
    assert answers["h1"][1].get("alt-svc") == f'h3=":{port}"; ma=86400'
    want = expected[1000:3000] if range_header else expected
    reference = {name: answers["h1"][1].get(name) for name in HEADERS}
    for name, (_, headers, body) in answers.items():
        assert body == want, name
        assert {h: headers.get(h) for h in HEADERS} == reference, name


def test_a_cleartext_node_does_not_advertise_http3(mirror):
    response = mirror.request("GET", "/api/models/org/model")
    assert response.status == 200 and response.header("Alt-Svc") is None


def test_a_real_client_downloads_over_https(tls_mirror, fake_hub, tmp_path):
    script = "from huggingface_hub import hf_hub_download; print(hf_hub_download('org/model', 'config.json'))"
    env = clean_env() | {"HF_ENDPOINT": tls_mirror.https_url, "HF_HOME": str(tmp_path / "hf"),
                         "SSL_CERT_FILE": str(tls_mirror.ca), "REQUESTS_CA_BUNDLE": str(tls_mirror.ca)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(result.stdout.strip().splitlines()[-1], "rb") as downloaded:
        assert downloaded.read() == fake_hub.file("org/model", "config.json")


def subject(url: str) -> str:
    host_port = url.removeprefix("https://")
    out = subprocess.run(["openssl", "s_client", "-connect", host_port, "-servername", "localhost"],
                         input=b"", capture_output=True, timeout=30)
    return next((line for line in out.stdout.decode().splitlines() if line.startswith("subject=")), "")


def test_sighup_reloads_the_certificate_without_dropping_a_transfer(tls_mirror, fake_hub, tmp_path):
    assert "first-cert" in subject(tls_mirror.https_url)
    # A slow cold download over TLS is running when the certificate changes.
    fake_hub.throttle(1024 * 1024)
    target = tmp_path / "slow.bin"
    slow = subprocess.Popen(["curl", "-sS", "--fail", "--http2", "--cacert", str(tls_mirror.ca), "-o", str(target),
                             tls_mirror.https_url + "/org/model/resolve/main/model.safetensors"], stderr=subprocess.PIPE)
    wait_until(lambda: target.exists() and target.stat().st_size > 0, "the slow download to start", timeout=30)
    cert, key = make_certificate(tls_mirror.certs, "second-cert")
    (tls_mirror.certs / "live.key").write_bytes(key.read_bytes())
    (tls_mirror.certs / "live.pem").write_bytes(cert.read_bytes())
    os.kill(tls_mirror.proc.pid, signal.SIGHUP)
    wait_until(lambda: "second-cert" in subject(tls_mirror.https_url), "new connections to get the new certificate", timeout=30)
    assert slow.wait(timeout=120) == 0, slow.stderr.read().decode()
    fake_hub.throttle(0)
    assert target.read_bytes() == fake_hub.file("org/model", "model.safetensors"), "the transfer survived the reload"
    assert tls_mirror.proc.poll() is None
    # A broken file on the next SIGHUP leaves the current certificate in place.
    (tls_mirror.certs / "live.pem").write_text("not a certificate")
    os.kill(tls_mirror.proc.pid, signal.SIGHUP)
    time.sleep(1)
    assert "second-cert" in subject(tls_mirror.https_url) and tls_mirror.proc.poll() is None
