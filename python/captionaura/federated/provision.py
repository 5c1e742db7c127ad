"""Provisioning of a federation's startup kits (issue 7): a CA, the server's TLS certificate and key (SANs
include localhost), an EC key pair per client for node authentication (Flower's SuperNode authentication
takes NIST-curve EC keys in OpenSSH format, private and public), a TOML config per node, private keys
with mode 0600 and a manifest of SHA-256 hashes. Re-running with more clients adds kits and never touches existing keys or certificates.

    out/
      ca/ca.crt  ca/ca.key                 the CA key stays with the operator, it is in no kit
      server/ca.crt server.crt server.key authorized_supernodes.csv server.toml
      client-0001/ ca.crt client.key client.pub client.toml   client.key: OpenSSH private key (P-384)

The SuperLink admits the keys listed in authorized_supernodes.csv once an operator registers each
(`flwr supernode register client.pub`, see captionaura.flower).
      manifest.json                        {"server_address", "clients", "files": {path: sha256}}
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_VALID_DAYS = 3650


@dataclass
class ProvisionResult:
    out_dir: Path
    server_dir: Path
    client_dirs: dict[str, Path]
    added: list[str]
    manifest: dict


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Atomic write; private files are created 0600 from the start (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600 if private else 0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "captionaura federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"server_address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _san(host: str) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        ip = ipaddress.ip_address(host)
        if x509.IPAddress(ip) not in names:
            names.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid TOML basic string


def _load_or_make_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_p, crt_p = ca_dir / "ca.key", ca_dir / "ca.crt"
    if key_p.exists() and crt_p.exists():
        key = serialization.load_pem_private_key(key_p.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(crt_p.read_bytes())  # type: ignore[return-value]
    key = ec.generate_private_key(ec.SECP384R1())
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("captionaura federation CA"))
            .issuer_name(_name("captionaura federation CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    _write(key_p, _key_pem(key), private=True)
    _write(crt_p, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _server_cert(ca_key, ca_cert, host: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = _dt.datetime.now(_dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=_VALID_DAYS))
            .add_extension(_san(host), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provision(clients: int | Sequence[str], server_address: str, out_dir: str | os.PathLike) -> ProvisionResult:
    """Write (or extend) the kits under `out_dir`. `clients` is a count (names client-0001, ...) or names.
    Idempotent: existing kits, the CA and the server's key are kept; only missing clients are added. A
    different `server_address` than the one already provisioned is refused (its certificate would not match)."""
    out = Path(out_dir)
    host, port = _host_port(server_address)
    names = [f"client-{i:04d}" for i in range(1, clients + 1)] if isinstance(clients, int) else list(clients)
    if len(set(names)) != len(names) or any(not n or "/" in n or n in ("ca", "server") for n in names):
        raise ValueError("client names must be distinct, non-empty, without '/', and not 'ca' or 'server'")
    man_p = out / "manifest.json"
    old = json.loads(man_p.read_text()) if man_p.exists() else None
    if old and old["server_address"] != server_address:
        raise ValueError(f"{out} was provisioned for {old['server_address']}, not {server_address}")
    known = list(old["clients"]) if old else []

    ca_key, ca_cert = _load_or_make_ca(out / "ca")
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    sdir = out / "server"
    if not (sdir / "server.key").exists() or not (sdir / "server.crt").exists():
        skey = ec.generate_private_key(ec.SECP384R1())
        _write(sdir / "server.key", _key_pem(skey), private=True)
        _write(sdir / "server.crt", _server_cert(ca_key, ca_cert, host, skey).public_bytes(serialization.Encoding.PEM))
    if not (sdir / "ca.crt").exists():
        _write(sdir / "ca.crt", ca_pem)

    added: list[str] = []
    cdirs: dict[str, Path] = {}
    for name in known + [n for n in names if n not in known]:
        cdir = out / name
        cdirs[name] = cdir
        if (cdir / "client.key").exists():
            continue
        key = ec.generate_private_key(ec.SECP384R1())
        _write(cdir / "client.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                      serialization.NoEncryption()), private=True)
        _write(cdir / "client.pub", key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                  serialization.PublicFormat.OpenSSH) + b"\n")
        _write(cdir / "ca.crt", ca_pem)
        _write(cdir / "client.toml", (
            "# captionaura federated client (SuperNode) configuration\n"
            f"name = {_toml_str(name)}\n"
            f"server_address = {_toml_str(server_address)}\n"
            'root_certificates = "ca.crt"\n'
            'auth_private_key = "client.key"\n'
            'auth_public_key = "client.pub"\n').encode())
        added.append(name)
    all_names = list(cdirs)
    # the server's allow-list of node-authentication keys (one OpenSSH public key per line, Flower's CSV)
    keys = b"".join((cdirs[n] / "client.pub").read_bytes().strip() + b"," for n in all_names)
    _write(sdir / "authorized_supernodes.csv", keys.rstrip(b",") + b"\n")
    _write(sdir / "server.toml", (
        "# captionaura federated server (SuperLink) configuration\n"
        f"address = {_toml_str(f'0.0.0.0:{port}')}\n"
        f"public_address = {_toml_str(server_address)}\n"
        'ssl_ca_certfile = "ca.crt"\n'
        'ssl_certfile = "server.crt"\n'
        'ssl_keyfile = "server.key"\n'
        "enable_supernode_auth = true\n"
        'supernode_public_keys = "authorized_supernodes.csv"\n'
        f"clients = [{', '.join(_toml_str(n) for n in all_names)}]\n").encode())
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p != man_p and not p.name.endswith(".tmp"):
            files[p.relative_to(out).as_posix()] = _sha256(p)
    manifest = {"server_address": server_address, "clients": all_names, "files": files}
    _write(man_p, (json.dumps(manifest, indent=2) + "\n").encode())
    return ProvisionResult(out, sdir, cdirs, added, manifest)
