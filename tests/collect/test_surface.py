"""The server's surface under a hostile client: CORS, the Segment settings endpoint's
host, the metrics token, 404 bodies, slow clients, default rate limits, TLS and the data
dir's permissions. One real server on 127.0.0.1 (and one with TLS)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.collect.app import CORS_ALLOW_HEADERS
from aap.runner import ServerProcess, create_source
from tests.conftest import Running, examples, slow_fixture

pytestmark = pytest.mark.slow  # each test starts a server (or the CLI) of its own

METRICS_TOKEN = "metrics-secret-token"
SNOWPLOW_TP2 = "/com.snowplowanalytics.snowplow/tp2"


def _cli(data: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "aap", *args, "--data-dir", str(data)],
                          check=True, capture_output=True, text=True).stdout


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def _track(user: str) -> dict[str, object]:
    return {"type": "track", "event": "Surface", "userId": user}


@slow_fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("surface") / "data"
    key = create_source(data, "web", "--basis", "legitimate_interest")
    server = ServerProcess(data, workers=1, env={
        "AAP_METRICS_TOKEN": METRICS_TOKEN, "AAP_BODY_TIMEOUT_S": "2",
        "AAP_HEADER_TIMEOUT_S": "2"}).start()
    yield Running(server, key)
    server.stop()


# -- CORS --

def test_preflight_allows_only_listed_headers(srv: Running) -> None:
    r = httpx.options(srv.url + "/v1/batch", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-evil, content-type, cookie"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-headers"] == CORS_ALLOW_HEADERS
    assert "x-evil" not in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers


def test_credentials_only_where_an_sdk_sends_them(srv: Running) -> None:
    origin = {"Origin": "https://shop.example"}
    r = httpx.post(srv.url + "/v1/track", json=_track("cors-1"),
                   headers={**origin, **_basic(srv.key)})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    assert "access-control-allow-credentials" not in r.headers
    r = httpx.options(srv.url + SNOWPLOW_TP2, headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-allow-origin"] == "https://shop.example"


def test_origin_list_still_checked(srv: Running) -> None:
    key = create_source(srv.data_dir, "shop-only", "--basis", "legitimate_interest",
                        "--origin", "https://shop.example")
    r = httpx.post(srv.url + "/v1/track", json=_track("cors-2"),
                   headers={"Origin": "https://evil.example", **_basic(key)})
    assert r.status_code == 403
    assert r.json()["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in r.headers


# -- Segment's settings endpoint --

def test_settings_api_host_from_allowed_host_only(srv: Running) -> None:
    path = f"/v1/projects/{srv.key}/settings"
    r = httpx.get(srv.url + path)
    assert r.status_code == 200
    seg = r.json()["integrations"]["Segment.io"]
    assert seg["apiHost"] == f"127.0.0.1:{srv.server.port}/v1"
    assert "max-age" in r.headers["cache-control"]
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example", "127.0.0.1:x"):
        r = httpx.get(srv.url + path, headers={"Host": host})
        assert r.status_code == 400, host
        assert r.json()["code"] == "host_not_allowed"
        assert "evil" not in r.text


@given(host=st.from_regex(r"[a-z0-9.\-]{1,40}(:[0-9]{1,5})?", fullmatch=True))
@settings(max_examples=examples(25),  # each example is a request to a live server
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_settings_never_names_a_foreign_host(srv: Running, host: str) -> None:
    r = httpx.get(srv.url + f"/v1/projects/{srv.key}/settings", headers={"Host": host})
    if r.status_code == 200:
        api_host = r.json()["integrations"]["Segment.io"]["apiHost"]
        assert api_host.split(":")[0].removesuffix("/v1") in ("localhost", "127.0.0.1")
    else:
        assert r.status_code == 400, r.text


# -- /metrics --

def test_metrics_needs_the_token(srv: Running) -> None:
    assert httpx.get(srv.url + "/metrics").status_code == 401
    for bad in ("Bearer wrong", "Basic " + METRICS_TOKEN, "Bearer " + METRICS_TOKEN + "x"):
        r = httpx.get(srv.url + "/metrics", headers={"Authorization": bad})
        assert r.status_code == 401
        assert r.json()["code"] == "bad_metrics_token"
    r = httpx.get(srv.url + "/metrics", headers={"Authorization": "Bearer " + METRICS_TOKEN})
    assert r.status_code == 200
    assert "aap_requests" in r.text


# -- 404 --

@given(path=st.text(st.characters(codec="ascii", exclude_characters="?#%\x00\r\n"),
                    min_size=1, max_size=300))
@settings(max_examples=examples(40),  # each example is a request to a live server
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_404_does_not_echo_long_or_marked_up_paths(srv: Running, path: str) -> None:
    path = "/zz" + "".join(c for c in path if c.isprintable() and c not in " \\")
    r = httpx.get(srv.url + path)
    assert r.status_code == 404
    body = r.json()
    assert set(body) == {"code", "message", "detail"}
    if len(path) > 100 or "<" in path or ">" in path:
        assert path not in r.text
    assert "<" not in r.text


# -- slow clients --

def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    return s


def _read_all(s: socket.socket) -> bytes:
    """What the server sends until it closes the connection (or answers 408); fails if
    the server keeps the connection open for the socket's whole timeout (60 s)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out and out.startswith(b"HTTP/1.1 408"):
                break
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail("the server held a slow client's connection open")
    return out


def test_slow_body_is_cut_off_while_others_are_served(srv: Running) -> None:
    s = _raw(srv.server.port)
    auth = _basic(srv.key)["Authorization"]
    s.sendall(f"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
              "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode())
    started = time.monotonic()
    # the slow client holds its request open; the server still serves everyone else
    assert httpx.get(srv.url + "/healthz", timeout=30).status_code == 200
    for _ in range(3):
        try:
            s.sendall(b" ")
        except OSError:
            break
        time.sleep(0.5)
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 60
    assert httpx.get(srv.url + "/healthz", timeout=30).status_code == 200


def test_http2_is_not_spoken(srv: Running) -> None:
    """HTTP/2 would bypass the header deadline: a prior-knowledge HTTP/2 preface gets no
    HTTP/2 answer (the HTTP/1.1 parser refuses it, or the connection is closed)."""
    s = _raw(srv.server.port)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
    answer = _read_all(s)
    s.close()
    # an HTTP/2 server answers with its SETTINGS frame: 9-byte header, type 0x4
    assert not (len(answer) >= 9 and answer[3] == 0x4), answer[:40]


def test_slow_headers_are_cut_off_while_others_are_served(srv: Running) -> None:
    s = _raw(srv.server.port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert httpx.get(srv.url + "/healthz", timeout=30).status_code == 200
    for _ in range(3):
        try:
            s.sendall(b"a")
        except OSError:
            break
        time.sleep(0.5)
    # the server closes the connection without ever answering the unfinished request
    answer = _read_all(s)
    s.close()
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert httpx.get(srv.url + "/healthz", timeout=30).status_code == 200


# -- default rate limit --

def test_new_sources_get_the_default_rate_limit_and_it_can_change(srv: Running) -> None:
    data = srv.data_dir
    key = subprocess.run(
        [sys.executable, "-m", "aap", "sources", "create", "limited", "--data-dir", str(data),
         "--basis", "legitimate_interest"], check=True, capture_output=True, text=True,
        env={**os.environ, "AAP_DEFAULT_SOURCE_RATE_LIMIT": "2"}).stdout.splitlines()[-1]
    assert "rate 2/s" in next(line for line in _cli(data, "sources", "list").splitlines()
                              if "\tlimited\t" in line)
    fresh = srv.data_dir.parent / "fresh"
    _cli(fresh, "sources", "create", "plain")  # no --rate-limit, no setting: 1000/s
    assert "rate 1000/s" in _cli(fresh, "sources", "list")
    batch = {"batch": [_track(f"rl-{i}") for i in range(10)]}
    r = httpx.post(srv.url + "/v1/batch", json=batch, headers=_basic(key))
    assert r.status_code == 200, r.text  # one batch may be a burst
    r = httpx.post(srv.url + "/v1/batch", json=batch, headers=_basic(key))
    assert r.status_code == 429, r.text
    assert "unlimited" in _cli(data, "sources", "update", "limited", "--rate-limit", "0")
    assert "unlimited" in next(line for line in _cli(data, "sources", "list").splitlines()
                               if "\tlimited\t" in line)
    deadline = time.monotonic() + 60  # workers re-read a source within 10 s
    while True:
        r = httpx.post(srv.url + "/v1/batch", json=batch, headers=_basic(key))
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.status_code == 200, r.text


def test_rate_limit_update_refuses_bad_input(srv: Running) -> None:
    for args in (("nosuch", "--rate-limit", "5"), ("web", "--rate-limit", "-1")):
        p = subprocess.run([sys.executable, "-m", "aap", "sources", "update", *args,
                            "--data-dir", str(srv.data_dir)], capture_output=True, text=True)
        assert p.returncode != 0
        assert "Traceback" not in p.stderr and p.stderr.strip()


# -- the data dir: owner only --

def _open_to_others(root: Path) -> list[str]:
    bad = []
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(dirpath) / name
            st_ = p.lstat()
            if stat.S_ISLNK(st_.st_mode):
                continue
            if st_.st_mode & 0o077:
                bad.append(f"{p.relative_to(root)} {stat.filemode(st_.st_mode)}")
    if root.stat().st_mode & 0o077:
        bad.append(f". {stat.filemode(root.stat().st_mode)}")
    return bad


def _privacy_request(srv: Running, key: str, body: dict[str, object]) -> str:
    auth = {"Authorization": "Bearer " + key}
    r = httpx.post(srv.url + "/api/v1/privacy/requests", json=body, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    rid = str(r.json()["id"])
    deadline = time.monotonic() + 120
    while (got := httpx.get(srv.url + "/api/v1/privacy/requests/" + rid, headers=auth,
                            timeout=60).json())["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, got
        time.sleep(0.2)
    assert got["status"] == "done", got
    return rid


def test_data_dir_is_owner_only_after_traffic(srv: Running) -> None:
    _cli(srv.data_dir, "keys", "create", "--role", "analyst")
    privacy_key = _cli(srv.data_dir, "keys", "create", "--role", "privacy").splitlines()[-1]
    for i in range(5):
        r = httpx.post(srv.url + "/v1/batch", json={"batch": [_track(f"perm-{i}")]},
                       headers=_basic(srv.key))
        assert r.status_code == 200
        r = httpx.post(srv.url + "/v1/consent", headers=_basic(srv.key), json={
            "userId": f"perm-{i}", "purposes": {"analytics": True}})
        assert r.status_code == 200, r.text
    srv.server.wait_processed(timeout=120)
    # an access export, an erasure (receipt) and the audit log land in the data dir too
    rid = _privacy_request(srv, privacy_key, {"type": "access", "subject": {"userId": "perm-1"}})
    r = httpx.get(srv.url + f"/api/v1/privacy/requests/{rid}/export", timeout=60,
                  headers={"Authorization": "Bearer " + privacy_key})
    assert r.status_code == 200
    _privacy_request(srv, privacy_key, {"type": "erasure", "subject": {"userId": "perm-2"}})
    files = [p for p in srv.data_dir.rglob("*") if p.is_file()]
    assert len(files) > 10 and any("audit" in str(p) for p in files)
    assert _open_to_others(srv.data_dir) == []


def test_data_dir_made_open_is_closed_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "left-open.txt").write_text("x")
    os.chmod(data / "left-open.txt", 0o644)
    with ServerProcess(data, workers=1):
        assert _open_to_others(data) == []


# -- TLS --

def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serves_https_with_hsts(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    data = tmp_path / "data"
    write_key = create_source(data, "tls", "--basis", "legitimate_interest")
    server = ServerProcess(data, workers=1, env={"AAP_TLS_CERT": str(cert),
                                                 "AAP_TLS_KEY": str(key)})
    with server:
        assert server.url.startswith("https://")
        with httpx.Client(verify=server.tls) as c:
            r = c.get(server.url + "/healthz")
            assert r.status_code == 200
            assert r.headers["strict-transport-security"].startswith("max-age=")
            r = c.post(server.url + "/v1/track", json=_track("tls-1"), headers=_basic(write_key))
            assert r.status_code == 200, r.text
            assert "strict-transport-security" in r.headers
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on the TLS port
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10)


def test_plain_http_sends_no_hsts(srv: Running) -> None:
    assert "strict-transport-security" not in httpx.get(srv.url + "/healthz").headers


def test_serve_refuses_half_a_tls_pair(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path)
    p = subprocess.run([sys.executable, "-m", "aap", "serve", "--data-dir", str(tmp_path / "d"),
                        "--tls-cert", str(cert)], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "--tls-key" in p.stderr and "Traceback" not in p.stderr
