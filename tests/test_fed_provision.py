"""Provisioning kits: certificate chain and SANs, key permissions, TOML configs, manifest hashes, idempotent
re-runs that add clients without touching existing keys, and a real TLS handshake on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from captionaura.federated.provision import provision

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_kits_layout_chain_permissions_manifest(tmp_path):
    res = provision(3, "fl.example.org:9092", tmp_path)
    assert res.added == ["client-0001", "client-0002", "client-0003"]
    ca = x509.load_pem_x509_certificate((tmp_path / "ca/ca.crt").read_bytes())
    srv = x509.load_pem_x509_certificate((tmp_path / "server/server.crt").read_bytes())
    ca.public_key().verify(srv.signature, srv.tbs_certificate_bytes, ec.ECDSA(srv.signature_hash_algorithm))
    assert srv.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "fl.example.org"} <= set(san.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    for key in [tmp_path / "ca/ca.key", tmp_path / "server/server.key"] + \
               [tmp_path / f"client-000{i}/client.key" for i in (1, 2, 3)]:
        assert _mode(key) == 0o600, key
    # the CA key is in no kit
    assert not any(p.name == "ca.key" for d in ("server", "client-0001") for p in (tmp_path / d).iterdir())
    # client key pairs match, and the server's allow-list holds exactly the three public keys
    pubs = []
    for i in (1, 2, 3):
        d = tmp_path / f"client-000{i}"
        sk = serialization.load_ssh_private_key((d / "client.key").read_bytes(), password=None)
        pub = (d / "client.pub").read_bytes().strip()
        assert sk.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) == pub
        pubs.append(pub)
        cfg = tomllib.loads((d / "client.toml").read_text())
        assert cfg["server_address"] == "fl.example.org:9092" and cfg["name"] == f"client-000{i}"
        assert (d / cfg["root_certificates"]).read_bytes() == (tmp_path / "ca/ca.crt").read_bytes()
    assert (tmp_path / "server/authorized_supernodes.csv").read_bytes().strip().split(b",") == pubs
    scfg = tomllib.loads((tmp_path / "server/server.toml").read_text())
    assert scfg["address"] == "0.0.0.0:9092" and scfg["clients"] == res.manifest["clients"]
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["files"] and all(hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() == h
                                for f, h in man["files"].items())
    assert "server/server.key" in man["files"] and "client-0003/client.toml" in man["files"]


def test_rerun_adds_clients_without_touching_existing(tmp_path):
    provision(2, "localhost:9092", tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".key", ".crt", ".pub")}
    res = provision(4, "localhost:9092", tmp_path)
    assert res.added == ["client-0003", "client-0004"]
    for p, data in before.items():
        assert p.read_bytes() == data, p
    again = provision(4, "localhost:9092", tmp_path)
    assert again.added == []
    assert len((tmp_path / "server/authorized_supernodes.csv").read_bytes().split(b",")) == 4
    named = provision(["alice-phone"], "localhost:9092", tmp_path)
    assert named.added == ["alice-phone"] and (tmp_path / "alice-phone/client.key").exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["clients"][-1] == "alice-phone"
    with pytest.raises(ValueError, match="provisioned for localhost:9092"):
        provision(1, "10.0.0.1:9092", tmp_path)
    with pytest.raises(ValueError, match="HOST:PORT"):
        provision(1, "localhost", tmp_path / "other")


def test_tls_handshake_with_provisioned_certificates(tmp_path):
    provision(1, "127.0.0.1:0", tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(tmp_path / "server/server.crt", tmp_path / "server/server.key")
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(tmp_path / "client-0001/ca.crt")
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    got = {}

    def serve():
        conn, _ = lsock.accept()
        with sctx.wrap_socket(conn, server_side=True) as s:
            got["msg"] = s.recv(5)
            s.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with cctx.wrap_socket(raw, server_hostname="localhost") as c:
            c.sendall(b"hello")
            assert c.recv(2) == b"ok"
    t.join(5)
    lsock.close()
    assert got["msg"] == b"hello"
    # a client trusting another CA refuses the server
    other = tmp_path / "other"
    provision(1, "127.0.0.1:0", other)
    bad = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bad.load_verify_locations(other / "ca/ca.crt")
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve_once():
        conn, _ = lsock.accept()
        try:
            sctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve_once)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            bad.wrap_socket(raw, server_hostname="localhost")
    t.join(5)
    lsock.close()


def test_cli_provision_adds_clients_without_touching_keys(tmp_path):
    from captionaura.cli import main

    assert main(["provision", "--clients", "2", "--server-address", "127.0.0.1:9092", "--out", str(tmp_path)]) == 0
    keys = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.suffix in (".key", ".crt", ".pub")}
    assert len(keys) >= 8
    assert main(["provision", "--clients", "3", "--server-address", "127.0.0.1:9092", "--out", str(tmp_path)]) == 0
    for path, data in keys.items():
        assert path.read_bytes() == data, path
    assert (tmp_path / "client-0003" / "client.key").is_file()
    assert main(["provision", "--clients", "3", "--server-address", "example.org:1", "--out", str(tmp_path)]) == 2
