#!/usr/bin/env python3
"""A local certificate authority and a server certificate for intake's HTTPS on a laptop.

Clients such as the official PagerDuty library refuse any base URL that is not ``https://``.
This makes, with the ``openssl`` command line tool:

* ``ca.pem`` / ``ca.key``: "Aftercare local development CA", made once and kept. Trust
  ``ca.pem`` in the clients you test with (README, "HTTPS on a laptop"); never in production;
* ``intake.pem`` / ``intake.key``: a server certificate signed by it for ``localhost``,
  ``127.0.0.1`` and ``::1`` (plus any ``--host``), remade when missing, when the names change
  or when it has less than 30 days left.

    python3 infra/devcert.py                      # into .local/devcert/
    python3 infra/devcert.py --dir /tmp/certs --host intake.test

then start intake with ``AFTERCARE_INTAKE_TLS_CERTFILE=.local/devcert/intake.pem`` and
``AFTERCARE_INTAKE_TLS_KEYFILE=.local/devcert/intake.key`` (``make run HTTPS=1`` does).
Only the standard library and ``openssl`` are needed, as for the rest of infra/.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".local" / "devcert"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
# Browsers and macOS refuse server certificates valid for more than 825 days.
SERVER_DAYS = 825
RENEW_WITHIN_S = 30 * 24 * 3600


class DevCertError(RuntimeError):
    pass


def _openssl(*args: str) -> str:
    tool = shutil.which("openssl")
    if tool is None:
        raise DevCertError(
            "the 'openssl' command is needed to make the dev certificate; install it (e.g. apt install openssl)"
        )
    done = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DevCertError(f"openssl {' '.join(args[:2])} failed:\n{done.stderr}")
    return done.stdout


def _subject_alt_names(hosts: list[str]) -> str:
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            names.append(f"IP:{host}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def make_ca(directory: Path) -> tuple[Path, Path]:
    """The dev CA's certificate and key, made if missing."""
    ca_cert, ca_key = directory / "ca.pem", directory / "ca.key"
    if ca_cert.exists() and ca_key.exists():
        return ca_cert, ca_key
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key))
    ca_key.chmod(0o600)
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", str(CA_DAYS),
        "-subj", "/O=Aftercare/CN=Aftercare local development CA",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        "-out", str(ca_cert),
    )  # fmt: skip
    return ca_cert, ca_key


def _current(cert: Path, hosts: list[str]) -> bool:
    if not cert.exists():
        return False
    try:
        _openssl("x509", "-in", str(cert), "-noout", "-checkend", str(RENEW_WITHIN_S))
    except DevCertError:
        return False  # expiring soon (or unreadable): make a new one
    text = _openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName")
    listed = text.replace("IP Address:", "IP:").replace(" ", "").replace("\n", ",")
    wanted = _subject_alt_names(hosts).replace("IP:::1", "IP:0:0:0:0:0:0:0:1")
    return all(name in listed for name in wanted.split(","))


def make_server_cert(directory: Path, hosts: list[str]) -> tuple[Path, Path]:
    """A server certificate for ``hosts`` signed by the dev CA (remade only when needed)."""
    ca_cert, ca_key = make_ca(directory)
    cert, key = directory / "intake.pem", directory / "intake.key"
    if key.exists() and _current(cert, hosts):
        return cert, key
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    key.chmod(0o600)
    with tempfile.TemporaryDirectory() as scratch:
        request, extensions = Path(scratch) / "intake.csr", Path(scratch) / "extensions.cnf"
        _openssl("req", "-new", "-key", str(key), "-subj", f"/O=Aftercare/CN={hosts[0]}", "-out", str(request))
        extensions.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
            f"subjectAltName={_subject_alt_names(hosts)}\n"
        )
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-sha256", "-days", str(SERVER_DAYS), "-extfile", str(extensions),
            "-out", str(cert),
        )  # fmt: skip
    return cert, key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the files go (default .local/devcert)")
    parser.add_argument("--host", action="append", default=[], help="another name or IP address the cert is for")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *args.host]))
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        cert, key = make_server_cert(args.dir, hosts)
    except DevCertError as problem:
        print(f"devcert: {problem}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"dev CA (trust this in your clients): {args.dir / 'ca.pem'}")
        print(f"AFTERCARE_INTAKE_TLS_CERTFILE={cert}")
        print(f"AFTERCARE_INTAKE_TLS_KEYFILE={key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
