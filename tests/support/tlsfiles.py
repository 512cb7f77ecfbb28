"""A throw-away PKI for TLS tests, made with the openssl command line: a CA, server
certificates (for redis-server and for replwatch's own HTTP server), a client certificate,
and a second "rogue" CA that signed nothing the servers use (to prove verification is on).

Keys are EC P-256 (fast to make); certificates live two days. Nothing here is a secret
worth keeping: the directory is the test's tmp_path.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    ca: Path  # the CA bundle every server and client here trusts
    ca_key: Path
    rogue_ca: Path  # a CA that signed nothing: trusting only it must fail the handshake
    server: CertPair  # SAN IP:127.0.0.1, DNS:localhost (serverAuth + clientAuth)
    named_server: CertPair  # SAN DNS:redis.internal only: needs tls.server_name
    client: CertPair  # a client certificate for tls-auth-clients yes


def _openssl(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(
            ["openssl", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        pytest.fail("openssl is not installed (scripts/test installs the Debian package)")
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"openssl {' '.join(args)} failed: {exc.stderr}") from None


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req", "-x509", "-new", "-nodes",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _leaf(directory: Path, name: str, ca: Path, ca_key: Path, san: str | None) -> CertPair:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    _openssl(
        "req", "-new", "-nodes",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    ext = directory / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "extendedKeyUsage=serverAuth,clientAuth"]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    key.chmod(0o600)
    return CertPair(cert, key)


def make_pki(directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca(directory, "replwatch-test-ca")
    rogue_ca, _ = _ca(directory, "rogue-ca")
    return PKI(
        ca=ca,
        ca_key=ca_key,
        rogue_ca=rogue_ca,
        server=_leaf(directory, "server", ca, ca_key, "IP:127.0.0.1,DNS:localhost"),
        named_server=_leaf(directory, "named-server", ca, ca_key, "DNS:redis.internal"),
        client=_leaf(directory, "client", ca, ca_key, None),
    )


def redis_tls_args(tls_port: int, pki: PKI, pair: CertPair | None = None) -> list[str]:
    """redis-server arguments: a TLS port beside the plain one (the plain one is the test's
    own back door; replwatch is given only rediss:// URLs of the TLS port), client
    certificates required, replication over TLS."""
    pair = pair or pki.server
    return [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(pair.cert),
        "--tls-key-file", str(pair.key),
        "--tls-ca-cert-file", str(pki.ca),
        "--tls-auth-clients", "yes",
        "--tls-replication", "yes",
    ]  # fmt: skip
