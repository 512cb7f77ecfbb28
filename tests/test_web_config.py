"""The exporter's web config (exporter-toolkit format): the pure parser table, the basic
auth checker, and a real daemon behind TLS + bcrypt basic auth that Prometheus scrapes, the
admin CLI talks to, and that picks up an edited file without a restart."""

from __future__ import annotations

import base64
import http.client
import ssl
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from replwatch.config.web import load_web_config, parse_web_config
from replwatch.errors import ConfigError
from replwatch.web_config import BasicAuthChecker, parse_basic

from .support.daemons import RunningDaemon, cli, fetch, value
from .support.promstack import PrometheusAPI, start_prometheus
from .support.servers import free_port, wait_for
from .support.tlsfiles import PKI, make_pki

USER, PASSWORD = "prometheus", "scrape-Secret-7c1"
TOKEN = "admin-Token-93f"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------- parser table

BASE = Path("/etc/replwatch")
VALID_TLS = {"cert_file": "s.crt", "key_file": "s.key"}
INVALID: list[tuple[str, Any, str]] = [
    ("not-a-mapping", ["x"], "<root>: must be a mapping"),
    ("unknown-top", {"tls_config": {}}, "tls_config: unknown key"),
    ("unknown-tls", {"tls_server_config": {**VALID_TLS, "certfile": "x"}}, "certfile: unknown key"),
    ("no-key", {"tls_server_config": {"cert_file": "s.crt"}}, "key_file: required"),
    (
        "client-auth-value",
        {"tls_server_config": {**VALID_TLS, "client_auth_type": "Sometimes"}},
        "client_auth_type: must be one of NoClientCert",
    ),
    (
        "client-auth-unverified",
        {"tls_server_config": {**VALID_TLS, "client_auth_type": "RequireAnyClientCert"}},
        "RequireAnyClientCert is not supported",
    ),
    (
        "client-auth-needs-ca",
        {"tls_server_config": {**VALID_TLS, "client_auth_type": "RequireAndVerifyClientCert"}},
        "client_ca_file: needed by RequireAndVerifyClientCert",
    ),
    (
        "versions",
        {"tls_server_config": {**VALID_TLS, "min_version": "TLS13", "max_version": "TLS12"}},
        "min_version: above max_version",
    ),
    (
        "version-name",
        {"tls_server_config": {**VALID_TLS, "min_version": "SSL3"}},
        "min_version: must be 'TLS10', 'TLS11', 'TLS12' or 'TLS13'",
    ),
    (
        "cipher-suites",
        {"tls_server_config": {**VALID_TLS, "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
        "cipher_suites: not supported",
    ),
    ("plain-password", {"basic_auth_users": {"bob": "hunter2"}}, "user 'bob': not a bcrypt hash"),
    (
        "users-a-list",
        {"basic_auth_users": ["bob"]},
        "basic_auth_users: must be a mapping of user names to bcrypt hashes, like "
        "{prometheus: $2y$10$…}; got a list",
    ),
    (
        "sans-a-string",
        {"tls_server_config": {**VALID_TLS, "client_allowed_sans": "prometheus.example"}},
        "tls_server_config.client_allowed_sans: must be a list of names, like "
        "[prometheus.example]; got a string",
    ),
    (
        "http2-not-a-boolean",
        {"http_server_config": {"http2": "yes please"}},
        "http_server_config.http2: must be true or false; got a string",
    ),
    ("colon-user", {"basic_auth_users": {"a:b": HASH}}, "cannot contain ':'"),
    (
        "header",
        {"http_server_config": {"headers": {"Set-Cookie": "x"}}},
        "header 'Set-Cookie' cannot be set",
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_web_configs(data: Any, expected: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_web_config(data, BASE)
    lines = caught.value.args[0]
    assert any(expected in line for line in lines), lines
    assert "hunter2" not in str(lines)


def test_valid_web_config_resolves_paths_from_its_directory() -> None:
    config = parse_web_config(
        {
            "tls_server_config": {
                **VALID_TLS,
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": "/abs/ca.crt",
            },
            "http_server_config": {"headers": {"X-Frame-Options": "deny"}, "http2": True},
            "basic_auth_users": {USER: HASH},
        },
        BASE,
    )
    assert config.tls_server_config is not None
    assert config.tls_server_config.cert_file == BASE / "s.crt"
    assert config.tls_server_config.key_file == BASE / "s.key"
    assert config.tls_server_config.client_ca_file == Path("/abs/ca.crt")
    assert config.basic_auth_users == {USER: HASH}
    assert parse_web_config(None, BASE).tls_server_config is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic(USER, PASSWORD), (USER, PASSWORD.encode())),
        (basic(USER, ""), (USER, b"")),
        ("basic " + base64.b64encode(b"u:p:q").decode(), ("u", b"p:q")),
        ("Bearer abc", None),
        ("Basic !!notbase64", None),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
        (None, None),
        ("", None),
    ],
)
def test_parse_basic(header: str | None, expected: tuple[str, bytes] | None) -> None:
    assert parse_basic(header) == expected


def test_basic_auth_checker_caches_only_good_answers() -> None:
    checker = BasicAuthChecker({USER: HASH})
    assert checker.check(basic(USER, PASSWORD))
    assert checker.check(basic(USER, PASSWORD))  # from the cache
    assert len(checker._ok) == 1
    assert not checker.check(basic(USER, PASSWORD + "x"))
    assert not checker.check(basic("nobody", PASSWORD))
    assert not checker.check(None)
    assert len(checker._ok) == 1


def test_load_web_config_errors_name_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert str(caught.value).startswith(f"{path}: tls_server_config.cert_file: cannot read")
    path.write_text("basic_auth_users: [\n")
    with pytest.raises(ConfigError, match=r"web.yml: line \d+, column \d+: "):
        load_web_config(path)
    # the config file's guards hold here too: an alias bomb is refused, not expanded
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        bomb.append(f"{chr(97 + level)}: &{chr(97 + level)} " + str([f"*{chr(96 + level)}"] * 10))
    path.write_text("\n".join(bomb).replace("'", "") + "\n")
    with pytest.raises(ConfigError, match="alias"):
        load_web_config(path)


# --------------------------------------------------------------------------- real daemon


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def write_web_config(path: Path, pki: PKI, users: dict[str, str], extra_tls: str = "") -> None:
    lines = [
        "tls_server_config:",
        f"  cert_file: {pki.server.cert}",
        f"  key_file: {pki.server.key}",
        *([extra_tls] if extra_tls else []),
        "http_server_config:",
        "  headers: {X-Content-Type-Options: nosniff}",
        "basic_auth_users:",
        *(f"  {user}: '{hashed}'" for user, hashed in users.items()),
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def protected(tmp_path: Path, pki: PKI) -> Iterator[tuple[RunningDaemon, Path, int]]:
    web = tmp_path / "web.yml"
    write_web_config(web, pki, {USER: HASH})
    port = free_port()
    cfg = tmp_path / "replwatch.yaml"
    cfg.write_text(
        f'exporter: {{listen: "127.0.0.1:{port}", web_config: {web}}}\n'
        f'admin: {{token: "{TOKEN}"}}\n'
    )
    context = ssl.create_default_context(cafile=str(pki.ca))
    with RunningDaemon(cfg, port, context=context, basic=(USER, PASSWORD)) as daemon:
        wait_for(lambda: daemon.fetch("/-/healthy")[0] == 200, 20, "the daemon over https")
        yield daemon, web, port


def test_every_endpoint_needs_basic_auth_and_tls(
    protected: tuple[RunningDaemon, Path, int], pki: PKI
) -> None:
    daemon, _web, port = protected
    context = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://127.0.0.1:{port}"
    for path in (
        "/metrics",
        "/-/healthy",
        "/-/ready",
        "/routing",
        "/api/v1/tasks",
        "/",
        "/status.json",
        "/status.js",
    ):
        assert fetch(base + path, context=context)[0] == 401, path
        assert fetch(base + path, context=context, basic=(USER, "wrong"))[0] == 401, path
        assert fetch(base + path, context=context, basic=("nobody", PASSWORD))[0] == 401, path
    assert fetch(base + "/-/reload", "POST", context=context)[0] == 401
    status, text = daemon.fetch("/metrics")
    assert status == 200 and "replwatch_build_info" in text
    # the admin API still needs its token behind basic auth (X-Replwatch-Token)
    assert daemon.fetch("/api/v1/tasks")[0] == 401
    assert (
        fetch(base + "/api/v1/tasks", token=TOKEN, context=context, basic=(USER, PASSWORD))[0]
        == 200
    )
    # a read-only GET changes nothing: /-/reload answers 405 and no reload is counted
    before = value(daemon.metrics(), "replwatch_config_reloads_failed_total") or 0.0
    assert daemon.fetch("/-/reload")[0] == 405
    assert (value(daemon.metrics(), "replwatch_config_reloads_failed_total") or 0.0) == before
    # plain HTTP to the TLS port gets no answer; a client that does not trust the CA neither
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        fetch(f"http://127.0.0.1:{port}/metrics")
    with pytest.raises(urllib.error.URLError):
        fetch(base + "/metrics", context=ssl.create_default_context(cafile=str(pki.rogue_ca)))
    # the configured response header, on every answer
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/-/healthy", headers={"Authorization": basic(USER, PASSWORD)})
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200
        assert answer.getheader("X-Content-Type-Options") == "nosniff"
    finally:
        conn.close()
    assert PASSWORD not in daemon.log_text() and HASH not in daemon.log_text()


def test_kubernetes_probes_through_tls_and_basic_auth(
    protected: tuple[RunningDaemon, Path, int],
) -> None:
    """As docs/commands.md's probe example ("Kubernetes probes") has the kubelet ask (scheme HTTPS,
    which verifies no certificate, and an Authorization header in httpHeaders): /-/healthy and
    /-/ready answer 200 (this daemon has neither groups nor tasks: ready once started); without
    the header, 401, so a probe that lacks it never passes."""
    _daemon, _web, port = protected
    kubelet = ssl.create_default_context()
    kubelet.check_hostname = False
    kubelet.verify_mode = ssl.CERT_NONE
    base = f"https://127.0.0.1:{port}"
    header = {"Authorization": basic(USER, PASSWORD)}
    wait_for(
        lambda: fetch(base + "/-/ready", context=kubelet, headers=header)[0] == 200,
        20,
        "/-/ready 200 with credentials",
    )
    assert fetch(base + "/-/healthy", context=kubelet, headers=header) == (200, "OK\n")
    for path in ("/-/healthy", "/-/ready"):
        assert fetch(base + path, context=kubelet)[0] == 401, path


def test_edited_web_config_applies_without_restart(
    protected: tuple[RunningDaemon, Path, int], pki: PKI
) -> None:
    daemon, web, port = protected
    pid = daemon.pid
    context = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://127.0.0.1:{port}"
    second = bcrypt.hashpw(b"grafana-pw", bcrypt.gensalt(rounds=4)).decode()
    assert fetch(base + "/metrics", context=context, basic=("grafana", "grafana-pw"))[0] == 401
    write_web_config(web, pki, {USER: HASH, "grafana": second})
    wait_for(
        lambda: (
            fetch(base + "/metrics", context=context, basic=("grafana", "grafana-pw"))[0] == 200
        ),
        10,
        "the new user to be accepted",
    )
    # a broken edit is refused and logged; the last good config stays
    web.write_text("basic_auth_users: {grafana: plaintext}\n")
    # the file is checked when a request comes (at most once a second), as exporter-toolkit
    wait_for(
        lambda: (
            daemon.fetch("/-/healthy")[0] == 200 and "web config not reloaded" in daemon.log_text()
        ),
        10,
        "the refusal logged",
    )
    assert fetch(base + "/metrics", context=context, basic=("grafana", "grafana-pw"))[0] == 200
    assert "plaintext" not in daemon.log_text()
    assert daemon.proc.poll() is None and daemon.pid == pid


def test_client_certificates_and_allowed_sans(tmp_path: Path, pki: PKI) -> None:
    web = tmp_path / "web.yml"
    write_web_config(
        web,
        pki,
        {USER: HASH},
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
        "  client_allowed_sans: [localhost]",
    )
    port = free_port()
    cfg = tmp_path / "replwatch.yaml"
    cfg.write_text(f'exporter: {{listen: "127.0.0.1:{port}", web_config: {web}}}\n'
                   f'admin: {{token: "{TOKEN}"}}\n')  # fmt: skip
    with_server_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_server_cert.load_cert_chain(str(pki.server.cert), str(pki.server.key))  # SAN localhost
    with_client_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_client_cert.load_cert_chain(str(pki.client.cert), str(pki.client.key))  # no SAN
    no_cert = ssl.create_default_context(cafile=str(pki.ca))
    with RunningDaemon(cfg, port, context=with_server_cert, basic=(USER, PASSWORD)) as daemon:
        wait_for(lambda: daemon.fetch("/-/healthy")[0] == 200, 20, "mutual TLS")
        base = f"https://127.0.0.1:{port}"
        for context in (no_cert, with_client_cert):  # no certificate / SAN not allowed
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                fetch(base + "/-/healthy", context=context, basic=(USER, PASSWORD))


def test_bad_web_config_refuses_to_start(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {ops: 'my-plain-password'}\n")
    cfg = tmp_path / "replwatch.yaml"
    cfg.write_text(f'exporter: {{web_config: {web}}}\nadmin: {{token: "{TOKEN}"}}\n')
    proc = cli("run", "-c", str(cfg), timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"{cfg}: exporter.web_config: {web}: basic_auth_users: user 'ops': not a bcrypt hash "
        "($2y$…)"
    ]
    assert "my-plain-password" not in proc.stderr


def test_prometheus_scrapes_through_tls_and_basic_auth(
    protected: tuple[RunningDaemon, Path, int], pki: PKI, tmp_path: Path
) -> None:
    _daemon, _web, port = protected
    password_file = tmp_path / "scrape.pw"
    password_file.write_text(PASSWORD)
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: replwatch
    scheme: https
    tls_config: {{ca_file: {pki.ca}}}
    basic_auth: {{username: {USER}, password_file: {password_file}}}
    static_configs: [{{targets: ["localhost:{port}"]}}]
"""
    )
    prometheus = start_prometheus(tmp_path, prom_config)
    try:
        api = PrometheusAPI(prometheus.base)
        wait_for(lambda: api.target_health() == ["up"], 30, "Prometheus to scrape over https")
        wait_for(lambda: api.query("replwatch_build_info"), 15, "a replwatch series in Prometheus")
    finally:
        prometheus.stop()


def test_tasks_cli_through_tls_and_basic_auth(
    protected: tuple[RunningDaemon, Path, int], pki: PKI, tmp_path: Path
) -> None:
    _daemon, _web, port = protected
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    client = tmp_path / "client.yaml"
    client.write_text(
        f"url: https://localhost:{port}\ntoken: {TOKEN}\nca_file: {pki.ca}\n"
        f"username: {USER}\npassword_file: {tmp_path / 'pw'}\n"
    )
    ok = cli("sync", "list", "--client-config", str(client), timeout=30)
    assert ok.returncode == 0, ok.stderr
    client.write_text(f"url: https://localhost:{port}\ntoken: {TOKEN}\nca_file: {pki.ca}\n")
    refused = cli("sync", "list", "--client-config", str(client), timeout=30)
    assert refused.returncode == 1
    assert "401" in refused.stderr and TOKEN not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    # the web config's basic auth refused it, not the token (issue 21: say what is needed)
    assert "needs basic-auth credentials" in refused.stderr, refused.stderr
    assert "the token was refused" not in refused.stderr


def test_bcrypt_cost_is_paid_once_per_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is what keeps a 1 s scrape interval cheap: the second check of the same
    credentials does not run bcrypt again (counted around the real bcrypt, not timed)."""
    checker = BasicAuthChecker({USER: HASH})
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, stored: bytes) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    for _ in range(5):
        assert checker.check(basic(USER, PASSWORD))
    assert len(calls) == 1
    for _ in range(3):
        assert not checker.check(basic(USER, "wrong"))
    assert len(calls) == 4  # a wrong password is checked every time


def test_non_ascii_content_length_is_a_400_not_a_crash() -> None:
    """str.isdigit() accepts '²', which int() refuses: the handler must answer 400."""
    import socket

    from prometheus_client import CollectorRegistry

    from replwatch.admin.api import AdminAPI
    from replwatch.exporter.server import ExporterHTTPServer

    server = ExporterHTTPServer(
        ("127.0.0.1", 0), CollectorRegistry(), lambda: True, admin=AdminAPI(None, None)
    )
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.bound_port), timeout=5) as sock:
            sock.sendall(
                "POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: ²\r\n\r\n".encode()
            )
            answer = sock.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 400"), answer
    finally:
        server.stop()
