r"""TLS material for the tests: a self-signed certificate for localhost
(SAN DNS:localhost, IP:127.0.0.1, IP:::1; valid for 100 years), committed
under tests/certs/. It is its own CA: a client trusts it with
ssl.create_default_context(cafile=LOCALHOST_CERT). Its key usage extension
is there for Python 3.13's strict verification (VERIFY_X509_STRICT).

Made once, from the repository's root, with:

    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -nodes -days 36525 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,digitalSignature,keyCertSign" \
        -keyout tests/certs/localhost.key -out tests/certs/localhost.pem
"""

import os

CERT_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "certs")
LOCALHOST_CERT = os.path.join(CERT_DIR, "localhost.pem")
LOCALHOST_KEY = os.path.join(CERT_DIR, "localhost.key")
