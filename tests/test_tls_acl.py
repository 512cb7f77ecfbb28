"""TLS and ACL users on every connection, against TLS-enabled redis-servers.

The servers listen on a TLS port (client certificates required, replication over TLS) and on
a plain port that only the test itself uses to set up ACL users and to read what happened.
replwatch is given rediss:// URLs of the TLS ports only, and the users of docs/acl.md
(read from that file, so the documentation and the test cannot drift apart), with their
passwords in password files and in ${ENV} variables.

What is proved:
- a whole daemon monitors (INFO, heartbeat, WAIT probe) and publishes the routing table
  over TLS as those minimal users, every one of its connections arriving on the TLS port
  under its own user;
- those ACLs are enough: nothing replwatch sent was denied (ACL LOG, INFO errorstats), apart
  from the documented CONFIG GET;
- the monitor wrote no key outside its namespace (its ACL allows none, and nothing was
  denied) and attempted no write on a replica (no command of any client was rejected there:
  commandstats rejected_calls, errorstat READONLY);
- verification is on by default: a server whose certificate is signed by another CA, or
  whose name does not match, is refused with reason "tls"; `server_name` and
  `insecure_skip_verify` change that as documented; a group's `tls:` overrides the top
  level field by field;
- the syncer copies a source to a target over TLS as the documented source and target
  users (password files via source_auth / target_auth; a task's own `tls:` over the top
  level), and `compare` reads both over TLS with its --tls-* options.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from replwatch.config import TLSConfig, parse_redis_url
from replwatch.errors import RedisError
from replwatch.observe.connection import Connection

from .support.clustering import Cluster
from .support.daemons import RunningDaemon, cli, value
from .support.sentinels import SentinelProcess
from .support.servers import RedisProcess, ServerSet, free_port, wait_for
from .support.tlsfiles import PKI, CertPair, make_pki, redis_tls_args

ACL_DOC = Path(__file__).resolve().parent.parent / "docs" / "acl.md"
DB_KEYS = 200


def doc_acl_rules() -> dict[str, list[str]]:
    """user → the rule strings of every `ACL SETUSER user …` line in docs/acl.md."""
    rules: dict[str, list[str]] = {}
    for line in ACL_DOC.read_text().splitlines():
        match = re.match(r"ACL SETUSER (\S+) (.+)$", line.strip())
        if match:
            rules.setdefault(match.group(1), []).append(match.group(2))
    return rules


def create_user(admin: redis.Redis, user: str, password: str) -> None:
    """The user with its documented rules (PASSWORD replaced)."""
    for rule in doc_acl_rules()[user]:
        admin.execute_command(
            "ACL", "SETUSER", user, *rule.replace(">PASSWORD", f">{password}").split()
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class TLSServer:
    """A RedisProcess with a TLS port (and the plain port the test uses)."""

    def __init__(
        self,
        servers: ServerSet,
        name: str,
        pki: PKI,
        pair: CertPair | None = None,
        replica_of: TLSServer | None = None,
    ) -> None:
        self.tls_port = free_port()
        extra = redis_tls_args(self.tls_port, pki, pair)
        kwargs: dict[str, Any] = {}
        if replica_of is not None:
            kwargs["replicaof"] = ("127.0.0.1", replica_of.tls_port)
        self.proc: RedisProcess = servers.start(name, extra=extra, **kwargs)

    @property
    def label(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    def admin(self) -> redis.Redis:
        return self.proc.client()

    def denials(self) -> list[dict[str, Any]]:
        """ACL LOG entries (reason, object, username, …) of each denial."""
        entries = self.admin().acl_log()
        return [{decoded(k): v for k, v in entry.items()} for entry in entries]

    def clients(self) -> list[dict[str, str]]:
        text = self.admin().execute_command("CLIENT", "LIST")
        text = text.decode() if isinstance(text, bytes) else text
        rows = []
        for line in text.splitlines():
            rows.append(dict(part.split("=", 1) for part in line.split(" ") if "=" in part))
        return rows


def decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def only_config_get(denials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The denials that are not the documented CONFIG GET of the monitor."""
    return [d for d in denials if decoded(d.get("object")) != "config|get"]


def secret_file(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def test_daemon_over_tls_as_minimal_acl_users(
    debian_servers: ServerSet, pki: PKI, tmp_path: Path
) -> None:
    servers = debian_servers
    master = TLSServer(servers, "master", pki)
    replica = TLSServer(servers, "replica", pki, replica_of=master)
    # a third server whose certificate names only redis.internal: its group overrides just
    # tls.server_name and keeps the top-level CA and client certificate
    named = TLSServer(servers, "named", pki, pki.named_server)
    monitor_pw, publisher_pw = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    for server in (master, replica, named):
        create_user(server.admin(), "replwatch-monitor", monitor_pw)
    create_user(master.admin(), "replwatch-publisher", publisher_pw)
    wait_for(lambda: replica.proc.info().get("master_link_status") == "up", 15, "TLS replication")

    port = free_port()
    monitor_pw_file = secret_file(tmp_path, "mon.pw", monitor_pw)
    cfg = tmp_path / "replwatch.yaml"
    cfg.write_text(
        f"""
exporter: {{listen: "127.0.0.1:{port}"}}
poll: {{interval: 250ms, timeout: 200ms}}
heartbeat: {{interval: 100ms}}
probe: {{interval: 300ms, timeout: 200ms}}
tls:
  ca_file: {pki.ca}
  cert_file: {pki.client.cert}
  key_file: {pki.client.key}
publish:
  url: "rediss://replwatch-publisher:${{PUBLISH_PW}}@{master.label}"
  interval: 200ms
groups:
  - name: tls
    master: "rediss://{master.label}"
    replicas: ["rediss://{replica.label}"]
    auth: {{username: replwatch-monitor, password_file: {monitor_pw_file}}}
  - name: named
    master: "rediss://{named.label}"
    auth: {{username: replwatch-monitor, password_file: {monitor_pw_file}}}
    tls: {{server_name: redis.internal}}
"""
    )
    with RunningDaemon(cfg, port, env={"PUBLISH_PW": publisher_pw}) as daemon:
        wait_for(lambda: daemon.fetch("/-/ready")[0] == 200, 20, "daemon ready")

        seen: list[str] = [""]

        def working() -> bool:
            text = seen[0] = daemon.metrics()
            return (
                value(text, "replwatch_node_up", node=master.label) == 1
                and value(text, "replwatch_node_up", node=replica.label) == 1
                and value(text, "replwatch_node_up", node=named.label) == 1
                and value(text, "replwatch_replica_heartbeat_lag_seconds", replica=replica.label)
                is not None
                and (value(text, "replwatch_probe_total", group="tls", result="ok") or 0) >= 2
                and value(text, "replwatch_probe_acked_replicas", group="tls") == 1
                and value(text, "replwatch_routing_in_rotation", replica=replica.label) == 1
            )

        try:
            wait_for(working, 20, "monitoring over TLS")
        except AssertionError:
            interesting = [
                line
                for line in seen[0].splitlines()
                if line.startswith(
                    (
                        "replwatch_node_up",
                        "replwatch_node_last_error",
                        "replwatch_probe",
                        "replwatch_routing_in_rotation",
                        "replwatch_replica_heartbeat_lag",
                    )
                )
            ]
            raise AssertionError("\n".join([*interesting, daemon.log_text()[-2000:]])) from None
        table = master.admin().get("replwatch:routing")
        assert table is not None, "routing table not published over TLS"
        published = json.loads(table)
        assert set(published["groups"]) >= {"tls", "named"}, published

        # every replwatch connection came in on the TLS port as its own user
        for server, users in (
            (master, {"replwatch-monitor", "replwatch-publisher"}),
            (replica, {"replwatch-monitor"}),
            (named, {"replwatch-monitor"}),
        ):
            ours = [c for c in server.clients() if c.get("name", "").startswith("replwatch")]
            assert ours, f"no replwatch connection on {server.proc.name}"
            for client in ours:
                assert client["laddr"].endswith(f":{server.tls_port}"), client
                assert client["user"] in users, client
            assert {c["user"] for c in ours} == users

    # the minimal ACLs were enough (only the documented CONFIG GET was refused) ...
    for server in (master, replica, named):
        assert only_config_get(server.denials()) == [], server.proc.name
    # ... and nothing was attempted on the replica that a replica refuses
    errorstats = replica.admin().info("errorstats")
    assert not any(k.startswith("errorstat_READONLY") for k in errorstats), errorstats
    stats = replica.admin().info("commandstats")
    rejected = {k: v for k, v in stats.items() if int(v.get("rejected_calls", 0)) > 0}
    assert set(rejected) <= {"cmdstat_config|get"}, rejected
    # the monitor's ACL allows only its own keys: a write elsewhere is refused, so the
    # empty denial log above is evidence, not luck
    mon = redis.Redis(
        host="127.0.0.1",
        port=master.tls_port,
        username="replwatch-monitor",
        password=monitor_pw,
        ssl=True,
        ssl_ca_certs=str(pki.ca),
        ssl_certfile=str(pki.client.cert),
        ssl_keyfile=str(pki.client.key),
    )
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            mon.set("app:key", "x")
    finally:
        mon.close()


def open_once(server: TLSServer, tls: TLSConfig) -> str | None:
    """Connect with `tls` and PING; the error reason, or None when it worked."""

    async def attempt() -> str | None:
        endpoint = parse_redis_url(f"rediss://{server.label}")
        try:
            conn = await Connection.open(endpoint, 3.0, tls)
        except RedisError as exc:
            return exc.reason
        try:
            await conn.execute([("PING",)], 3.0)
        finally:
            conn.close()
        return None

    return asyncio.run(attempt())


def test_tls_verification_is_on_by_default(debian_servers: ServerSet, pki: PKI) -> None:
    servers = debian_servers
    plain = TLSServer(servers, "ip-cert", pki)
    named = TLSServer(servers, "named-cert", pki, pki.named_server)
    client = {"cert_file": pki.client.cert, "key_file": pki.client.key}
    good = TLSConfig(ca_file=pki.ca, **client)
    assert open_once(plain, good) is None
    # signed by a CA we do not trust: refused
    assert open_once(plain, TLSConfig(ca_file=pki.rogue_ca, **client)) == "tls"
    # no CA given: the system bundle does not know the test CA either
    assert open_once(plain, TLSConfig(**client)) == "tls"
    # the certificate names redis.internal, not 127.0.0.1: refused unless server_name says so
    assert open_once(named, good) == "tls"
    assert (
        open_once(named, TLSConfig(ca_file=pki.ca, server_name="redis.internal", **client)) is None
    )
    assert (
        open_once(named, TLSConfig(ca_file=pki.ca, server_name="other.internal", **client)) == "tls"
    )
    # insecure_skip_verify: any certificate (still encrypted, still the client certificate)
    assert open_once(named, TLSConfig(insecure_skip_verify=True, **client)) is None
    # the server requires a client certificate (tls-auth-clients yes)
    assert open_once(plain, TLSConfig(ca_file=pki.ca)) in ("tls", "reset")


def test_sync_over_tls_as_minimal_acl_users(
    debian_servers: ServerSet, pki: PKI, tmp_path: Path
) -> None:
    servers = debian_servers
    source = TLSServer(servers, "source", pki)
    target = TLSServer(servers, "target", pki)
    source_pw, target_pw = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    create_user(source.admin(), "replwatch-sync-source", source_pw)
    create_user(target.admin(), "replwatch-sync-target", target_pw)
    compare_pw = secrets.token_urlsafe(24)
    for server in (source, target):
        create_user(server.admin(), "replwatch-compare", compare_pw)
    src = source.admin()
    pipe = src.pipeline(transaction=False)
    for i in range(DB_KEYS):
        pipe.set(f"k:{i}", f"v{i}")
        pipe.rpush(f"l:{i % 10}", i)
        pipe.hset(f"h:{i % 7}", str(i), i)
    pipe.execute()

    port = free_port()
    source_file = secret_file(tmp_path, "s.pw", source_pw)
    target_file = secret_file(tmp_path, "t.pw", target_pw)
    cfg = tmp_path / "replwatch.yaml"
    cfg.write_text(
        f"""
exporter: {{listen: "127.0.0.1:{port}"}}
# the top level trusts the wrong CA: the task's own `tls:` overrides just ca_file
tls: {{ca_file: {pki.rogue_ca}, cert_file: {pki.client.cert}, key_file: {pki.client.key}}}
sync:
  tasks:
    - name: tls-copy
      source: "rediss://{source.label}"
      target: "rediss://{target.label}"
      source_auth: {{username: replwatch-sync-source, password_file: {source_file}}}
      target_auth: {{username: replwatch-sync-target, password_file: {target_file}}}
      tls: {{ca_file: {pki.ca}}}
"""
    )
    with RunningDaemon(cfg, port) as daemon:
        tgt = target.admin()
        wait_for(
            lambda: tgt.dbsize() >= DB_KEYS + 17,
            30,
            f"the full sync over TLS; log: {daemon.log_text()[-2000:]}",
        )
        src.set("after", "streamed")
        src.rpush("l:0", "tail")
        wait_for(lambda: tgt.get("after") == b"streamed", 20, "the stream over TLS")
        wait_for(lambda: tgt.lrange("l:0", -1, -1) == [b"tail"], 10, "the stream in order")
        for key in (b"k:7", b"h:3", b"l:5"):
            assert src.dump(key) == tgt.dump(key), key
        text = daemon.metrics()
        assert value(text, "replwatch_sync_source_up", task="tls-copy") == 1
        assert value(text, "replwatch_sync_target_up", task="tls-copy") == 1
        for server, user in ((source, "replwatch-sync-source"), (target, "replwatch-sync-target")):
            ours = [c for c in server.clients() if c.get("user") == user]
            assert ours, f"no {user} connection"
            assert all(c["laddr"].endswith(f":{server.tls_port}") for c in ours), ours
    assert source.denials() == []
    assert target.denials() == []

    # compare over TLS (read-only, as the same users): equal; with the wrong CA it cannot
    # complete and says so in one line, without a password
    def compare(ca: Path) -> subprocess.CompletedProcess[str]:
        return cli(
            "compare",
            "--source", f"rediss://replwatch-compare:{compare_pw}@{source.label}",
            "--target", f"rediss://replwatch-compare:{compare_pw}@{target.label}",
            "--tls-ca-file", str(ca), "--tls-cert-file", str(pki.client.cert),
            "--tls-key-file", str(pki.client.key), "--ignore", "__replwatch:*",
        )  # fmt: skip

    equal = compare(pki.ca)
    assert equal.returncode == 0, equal.stdout + equal.stderr
    refused = compare(pki.rogue_ca)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert source.denials() == [] and target.denials() == []
    for secret in (source_pw, target_pw, compare_pw):
        assert secret not in equal.stdout + equal.stderr + refused.stdout + refused.stderr


def test_sentinel_group_over_tls_as_minimal_acl_users(
    debian_servers: ServerSet, pki: PKI, tmp_path: Path
) -> None:
    servers = debian_servers
    """A Sentinel group where the Sentinel, the master and the replica all speak TLS only to
    replwatch: discovery asks the Sentinel over TLS as the documented discovery user, and the
    nodes it names (their TLS ports: replication over TLS announces them) are polled over TLS
    as the monitor user."""
    master = TLSServer(servers, "master", pki)
    replica = TLSServer(servers, "replica", pki, replica_of=master)
    monitor_pw, discovery_pw = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    for server in (master, replica):
        create_user(server.admin(), "replwatch-monitor", monitor_pw)
    wait_for(lambda: replica.proc.info().get("master_link_status") == "up", 15, "TLS replication")
    sentinel_tls_port = free_port()
    sentinel = SentinelProcess(
        tmp_path,
        0,
        "tlsmaster",
        master.proc,
        quorum=1,
        master_port=master.tls_port,
        # the default user has a password only the test knows: replwatch gets in only as
        # replwatch-discovery
        requirepass=secrets.token_urlsafe(16),
        extra_lines=tuple(
            " ".join(redis_tls_args(sentinel_tls_port, pki)[i : i + 2]).lstrip("-")
            for i in range(0, len(redis_tls_args(sentinel_tls_port, pki)), 2)
        ),
    )
    try:
        with sentinel.client() as client:
            for rule in doc_acl_rules()["replwatch-discovery"]:
                words = rule.replace(">PASSWORD", f">{discovery_pw}").split()
                client.execute_command("ACL", "SETUSER", "replwatch-discovery", *words)

        def sentinel_sees_replica() -> bool:
            with sentinel.client() as client:
                replicas = client.execute_command("SENTINEL", "REPLICAS", "tlsmaster")
            return any(int(r[b"port"]) == replica.tls_port for r in replicas)

        wait_for(sentinel_sees_replica, 20, "the Sentinel to find the replica's TLS port")
        (tmp_path / "mon.pw").write_text(monitor_pw)
        (tmp_path / "disc.pw").write_text(discovery_pw)
        port = free_port()
        cfg = tmp_path / "replwatch.yaml"
        cfg.write_text(
            f"""
exporter: {{listen: "127.0.0.1:{port}"}}
poll: {{interval: 250ms, timeout: 200ms}}
probe: {{enabled: false}}
tls: {{ca_file: {pki.ca}, cert_file: {pki.client.cert}, key_file: {pki.client.key}}}
groups:
  - name: ha
    sentinel:
      addresses: ["rediss://127.0.0.1:{sentinel_tls_port}"]
      master_name: tlsmaster
      tls: true
      auth: {{username: replwatch-discovery, password_file: {tmp_path / "disc.pw"}}}
    auth: {{username: replwatch-monitor, password_file: {tmp_path / "mon.pw"}}}
"""
        )
        with RunningDaemon(cfg, port) as daemon:

            def discovered() -> bool:
                text = daemon.metrics()
                return (
                    value(text, "replwatch_discovery_success", group="ha") == 1
                    and value(text, "replwatch_node_up", node=master.label) == 1
                    and value(text, "replwatch_node_up", node=replica.label) == 1
                    and value(
                        text, "replwatch_replica_heartbeat_lag_seconds", replica=replica.label
                    )
                    is not None
                )

            wait_for(discovered, 30, f"Sentinel discovery over TLS; {daemon.log_text()[-1500:]}")
            with sentinel.client() as client:
                assert client.acl_log() == []
    finally:
        sentinel.stop()
    for server in (master, replica):
        assert only_config_get(server.denials()) == [], server.proc.name


def tls_port_of(proc: RedisProcess) -> int:
    return int(proc.extra[proc.extra.index("--tls-port") + 1])


def test_cluster_over_tls_discovery_and_sync(
    debian_servers: ServerSet, pki: PKI, tmp_path: Path
) -> None:
    servers = debian_servers
    """A Redis Cluster whose nodes speak TLS (tls-cluster yes: they announce their TLS
    ports): a cluster group discovers its shards over TLS and polls them there, a sync task
    copies a TLS source into the TLS cluster as a cluster target, and another copies the
    cluster (a cluster source, one reader per shard over TLS) into a TLS server."""
    cluster = Cluster(
        servers,
        masters=3,
        node_extra=lambda: [*redis_tls_args(free_port(), pki), "--tls-cluster", "yes"],
    )
    source = TLSServer(servers, "source", pki)
    copy = TLSServer(servers, "copy", pki)
    src = source.admin()
    src.mset({f"key:{i}": f"value-{i}" for i in range(300)})
    seed = f"rediss://127.0.0.1:{tls_port_of(cluster.nodes[0])}"
    port = free_port()
    cfg = tmp_path / "replwatch.yaml"
    cfg.write_text(
        f"""
exporter: {{listen: "127.0.0.1:{port}"}}
poll: {{interval: 250ms, timeout: 200ms}}
heartbeat: {{enabled: false}}
probe: {{enabled: false}}
tls: {{ca_file: {pki.ca}, cert_file: {pki.client.cert}, key_file: {pki.client.key}}}
groups:
  - name: shop
    cluster: {{startup_nodes: ["{seed}"]}}
sync:
  tasks:
    - name: into-cluster
      source: "rediss://{source.label}"
      target: {{cluster: {{startup_nodes: ["{seed}"]}}, tls: true}}
    # and out of it again: a cluster source over TLS (one reader per shard)
    - name: out-of-cluster
      source: {{cluster: {{startup_nodes: ["{seed}"]}}, tls: true}}
      target: "rediss://{copy.label}"
"""
    )
    with RunningDaemon(cfg, port) as daemon:

        def polled_over_tls() -> bool:
            text = daemon.metrics()
            return all(
                value(text, "replwatch_node_up", node=f"127.0.0.1:{tls_port_of(n)}") == 1
                for n in cluster.nodes
            )

        wait_for(polled_over_tls, 30, f"cluster shards over TLS; {daemon.log_text()[-1500:]}")

        def copied() -> int:
            total = 0
            for node in cluster.nodes:
                total += node.client().dbsize()
            return total

        wait_for(lambda: copied() >= 300, 30, f"the copy; {daemon.log_text()[-1500:]}")
        src.set("key:stream", "over-tls")

        def streamed() -> bool:
            for node in cluster.nodes:
                try:
                    return node.client().get("key:stream") == b"over-tls"
                except redis.exceptions.ResponseError:  # MOVED: another node owns the slot
                    continue
            return False

        wait_for(streamed, 20, "the stream into the TLS cluster")
        wait_for(
            lambda: copy.admin().get("key:stream") == b"over-tls",
            30,
            f"the copy out of the TLS cluster; {daemon.log_text()[-1500:]}",
        )
        assert copy.admin().get("key:7") == b"value-7"
