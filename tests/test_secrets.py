"""No password, token or basic-auth password ever leaves replwatch.

One daemon runs with every kind of secret the config can carry: an ACL password in a
password file, one inline in a URL (with characters that need percent-encoding), one from
${ENV}, a wrong one (so that authentication errors are reported), a sync task's source and
target passwords, a task created through the admin API with its password, the admin token
from a token file, and a basic-auth password of the web config. It is driven through its
paths that talk about connections: polls, an authentication failure, a sync, a reload, an
admin API error, the CLI's status, probe, sync status, check-config (valid and invalid) and
compare (failing), and the status page's data.

Then everything it produced is collected: the daemon's log at debug level, every HTTP
endpoint's answer (/metrics, /routing, health checks, the admin API, error bodies), every
CLI output (stdout and stderr), and what it left in Redis (the published routing table, the
sync checkpoints, client names). Each secret, as written and percent-encoded, is searched
for in all of it.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
from pathlib import Path
from urllib.parse import quote

import bcrypt
import pytest

from .support.daemons import RunningDaemon, cli, fetch, value
from .support.servers import RedisProcess, ServerSet, free_port, wait_for
from .support.tlsfiles import make_pki

MONITOR_RULES = (
    "on resetkeys resetchannels -@all +ping +info +client|setname +client|list +time +get "
    "+set +eval +evalsha +wait ~__replwatch:*"
)


class Secrets:
    monitor = "pw-file-Monitor-5f2c9a"
    inline = "inline/p@ss:w%rd-81d2"  # needs percent-encoding in a URL
    env = "env-Publish-0b77e1"
    wrong = "wrong-Password-9a0c3e"
    source = "source-File-7d1f44"
    target = "target-Inline-2e9b70"
    api = "api-Task-Pw-c3a5d8"
    token = "admin-Token-4be1f0"
    scrape = "basic-Auth-Scrape-66d1"

    @classmethod
    def all(cls) -> dict[str, str]:
        return {k: v for k, v in vars(cls).items() if isinstance(v, str) and not k.startswith("_")}


def add_user(server: RedisProcess, user: str, password: str, rules: str) -> None:
    server.client().execute_command("ACL", "SETUSER", user, *rules.split(), f">{password}")


def run_cli(*args: str, env: dict[str, str] | None = None) -> str:
    proc = cli(*args, env={**os.environ, **(env or {})})
    # the command line itself carries secrets (compare's URLs): only its verb is kept
    return f"$ replwatch {args[0]} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_no_secret_leaves_replwatch(debian_servers: ServerSet, tmp_path: Path) -> None:
    servers = debian_servers
    s = Secrets
    master = servers.start("master")
    replica = servers.start("replica", replica_of=master)
    target = servers.start("target")
    api_target = servers.start("api-target")
    add_user(master, "mon", s.monitor, MONITOR_RULES)
    add_user(replica, "mon", s.monitor, MONITOR_RULES)
    add_user(master, "mon2", s.inline, MONITOR_RULES)
    add_user(master, "pub", s.env, "on resetkeys -@all +client|setname +set +publish ~* &*")
    sync_rules = "on ~* &* +@all"
    add_user(master, "src", s.source, sync_rules)
    add_user(master, "apisrc", s.api, sync_rules)
    add_user(target, "tgt", s.target, sync_rules)
    master.client().set("some", "data")

    pki = make_pki(tmp_path / "pki")
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(s.scrape.encode(), bcrypt.gensalt(rounds=4)).decode()
    web.write_text(
        f"tls_server_config: {{cert_file: {pki.server.cert}, key_file: {pki.server.key}}}\n"
        f"basic_auth_users: {{scraper: '{hashed}'}}\n"
    )
    (tmp_path / "mon.pw").write_text(s.monitor + "\n")
    (tmp_path / "src.pw").write_text(s.source + "\n")
    (tmp_path / "token").write_text(s.token + "\n")
    port = free_port()
    m, r = master.port, replica.port
    cfg = tmp_path / "replwatch.yaml"
    cfg.write_text(
        f"""
exporter: {{listen: "127.0.0.1:{port}", web_config: {web}}}
poll: {{interval: 250ms, timeout: 200ms}}
heartbeat: {{interval: 100ms}}
probe: {{interval: 500ms, timeout: 250ms}}
admin: {{token_file: {tmp_path / "token"}}}
publish: {{url: "redis://pub:${{PUB_PW}}@127.0.0.1:{m}", interval: 200ms}}
groups:
  - name: main
    master: "127.0.0.1:{m}"
    replicas: ["127.0.0.1:{r}"]
    auth: {{username: mon, password_file: {tmp_path / "mon.pw"}}}
  - name: inline
    master: "redis://mon2:{quote(s.inline, safe="")}@127.0.0.1:{m}"
  - name: denied
    master: "redis://mon:{s.wrong}@127.0.0.1:{m}"
sync:
  tasks:
    - name: copy
      source: "127.0.0.1:{m}"
      source_auth: {{username: src, password_file: {tmp_path / "src.pw"}}}
      target: "redis://tgt:{s.target}@127.0.0.1:{target.port}"
"""
    )
    env = {"PUB_PW": s.env}
    context = ssl.create_default_context(cafile=str(pki.ca))
    collected: list[str] = []
    with RunningDaemon(
        cfg,
        port,
        env=env,
        context=context,
        basic=("scraper", s.scrape),
        global_args=("--log-level", "debug"),
    ) as daemon:
        wait_for(lambda: daemon.fetch("/-/ready")[0] == 200, 20, "daemon ready")

        def settled() -> bool:
            text = daemon.metrics()
            return (
                value(text, "replwatch_node_up", node=f"127.0.0.1:{r}") == 1
                and value(text, "replwatch_node_last_error_info", group="denied", reason="auth")
                == 1
                and value(text, "replwatch_sync_state", task="copy", state="incremental") == 1
                and target.client().get("some") == b"data"
                and master.client().get("replwatch:routing") is not None
            )

        wait_for(settled, 30, f"everything running; log: {daemon.log_text()[-1500:]}")
        # a task through the admin API, with its password; and a bad one (error body)
        api_task = {
            "name": "api-copy",
            "source": f"redis://apisrc:{s.api}@127.0.0.1:{m}",
            "target": f"127.0.0.1:{api_target.port}",
        }
        base = daemon.base
        for body in (api_task, {**api_task, "name": "bad", "target": f"redis://x:{s.api}@h:0"}):
            collected.append(
                post_json(base + "/api/v1/tasks", body, context, ("scraper", s.scrape), s.token)
            )
        wait_for(lambda: api_target.client().get("some") == b"data", 30, "the API task's copy")
        # a reload (SIGHUP), logged at debug
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: (
                value(daemon.metrics(), "replwatch_config_last_reload_successful") == 1
                and "reload" in daemon.log_text().lower()
            ),
            15,
            "the reload",
        )
        for path in (
            "/metrics",
            "/routing",
            "/routing/main",
            f"/health/replica/main/127.0.0.1:{r}",
            "/-/ready",
            "/",
            "/status.json",
        ):
            collected.append(f"GET {path}\n{daemon.fetch(path)[1]}")
        for path in ("/api/v1/tasks", "/api/v1/tasks/copy", "/api/v1/tasks/api-copy"):
            collected.append(
                f"GET {path}\n"
                + fetch(base + path, token=s.token, context=context, basic=("scraper", s.scrape))[1]
            )
        collected.append(fetch(base + "/metrics", context=context, basic=("scraper", "no"))[1])
        collected.append(
            fetch(base + "/api/v1/tasks", context=context, basic=("scraper", s.scrape))[1]
        )

        client_config = tmp_path / "client.yaml"
        (tmp_path / "scrape.pw").write_text(s.scrape)
        client_config.write_text(
            f"url: {base}\ntoken_file: {tmp_path / 'token'}\nca_file: {pki.ca}\n"
            f"username: scraper\npassword_file: {tmp_path / 'scrape.pw'}\n"
        )
        collected += [
            run_cli("status", "-c", str(cfg), env=env),
            run_cli("status", "-c", str(cfg), "--json", env=env),
            run_cli("probe", "-c", str(cfg), "--json", env=env),
            run_cli("check-config", "-c", str(cfg), env=env),
            run_cli("sync", "status", "-c", str(cfg), env=env),
            run_cli("sync", "status", "--client-config", str(client_config)),
            run_cli("sync", "list", "--client-config", str(client_config)),
            run_cli(
                "compare",
                "--source",
                f"redis://src:{s.wrong}@127.0.0.1:{m}",
                "--target",
                f"redis://tgt:{s.target}@127.0.0.1:{target.port}",
            ),
        ]
        broken = tmp_path / "broken.yaml"
        broken.write_text(
            cfg.read_text().replace(f"127.0.0.1:{target.port}", "127.0.0.1:99999")
            .replace(f"@127.0.0.1:{m}\"\n  - name: denied", "@127.0.0.1:0\"\n  - name: denied")
        )  # fmt: skip
        collected.append(run_cli("check-config", "-c", str(broken), env=env))
        collected.append(daemon.log_text())

    # the one place a secret must be kept: the API task's definition, to restart it; only
    # its owner can read it
    state_files = [f for f in (tmp_path / "replwatch-state").rglob("*") if f.is_file()]
    holding = [f for f in state_files if s.api.encode() in f.read_bytes()]
    assert holding, state_files
    assert all(f.stat().st_mode & 0o077 == 0 for f in holding), holding

    for server in (master, replica, target, api_target):
        admin = server.client()
        for key in admin.scan_iter(match="*replwatch*"):
            kind = admin.type(key)
            data = admin.hgetall(key) if kind == b"hash" else admin.get(key)
            collected.append(f"{server.name} {key!r} {data!r}")
        collected.append(str(admin.execute_command("CLIENT", "LIST")))

    blob = "\n".join(collected)
    # the paths that talk about connections and credentials were all taken
    for expected in (
        "/api/v1/tasks -> 201",  # the API task with its password
        "/api/v1/tasks -> 400",  # the bad one: an error body
        'reason="auth"',  # the wrong password, in /metrics
        "WRONGPASS",  # ... and in status
        "$ replwatch compare -> 3",  # compare could not log in
        "$ replwatch check-config -> 2",  # the broken config
        "redis://src:***@",  # redacted URLs are shown
        "reload",
        '"routing_reason"',  # the status page's data
    ):
        assert expected in blob, expected
    leaks = {
        name: form
        for name, secret in Secrets.all().items()
        for form in {secret, quote(secret, safe=""), quote(secret)}
        if form in blob
    }
    if leaks:
        where = {
            name: blob[max(0, blob.index(form) - 300) : blob.index(form) + 100]
            for name, form in leaks.items()
        }
        pytest.fail(f"secrets found in replwatch's output: {json.dumps(where, indent=1)}")


def post_json(
    url: str, body: dict[str, str], context: ssl.SSLContext, basic: tuple[str, str], token: str
) -> str:
    status, text = fetch(
        url,
        "POST",
        token,
        context=context,
        basic=basic,
        headers={"Content-Type": "application/json"},
        data=json.dumps(body).encode(),
        timeout=30,
    )
    return f"POST {url} -> {status}\n{text}"
