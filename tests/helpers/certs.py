"""TLS material for the tests, generated at test time."""

import atexit
import os
import shutil
import subprocess
import tempfile

_CERT_CACHE = {}


def make_self_signed_cert(hostname="localhost"):
    """Return (certfile, keyfile) paths for a self-signed certificate valid
    for ``hostname``, 127.0.0.1 and ::1.  Raises RuntimeError if neither the
    ``cryptography`` package nor the ``openssl`` CLI can make one."""
    if hostname in _CERT_CACHE:
        return _CERT_CACHE[hostname]
    d = tempfile.mkdtemp(prefix="fastsock-tls-")
    atexit.register(shutil.rmtree, d, True)
    certfile = os.path.join(d, "cert.pem")
    keyfile = os.path.join(d, "key.pem")
    try:
        _make_cert_cryptography(hostname, certfile, keyfile)
    except ImportError:
        _make_cert_openssl(hostname, certfile, keyfile)
    _CERT_CACHE[hostname] = (certfile, keyfile)
    return certfile, keyfile


def _make_cert_cryptography(hostname, certfile, keyfile):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(certfile, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, "wb") as f:
        f.write(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))


def _make_cert_openssl(hostname, certfile, keyfile):
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", keyfile, "-out", certfile, "-days", "30",
             "-subj", f"/CN={hostname}",
             "-addext",
             f"subjectAltName=DNS:{hostname},IP:127.0.0.1,IP:::1"],
            check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"cannot generate a certificate: no 'cryptography' package and "
            f"the openssl CLI failed: {exc!r}") from exc
