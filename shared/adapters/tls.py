"""The one TLS context every client uses: the system trust store, extended by ``SSL_CERT_FILE``.

Verification is always on. OpenSSL would let ``SSL_CERT_FILE`` *replace* the system bundle;
we load the system locations explicitly first so the file only adds to them (the simulators'
CA on a developer machine, a corporate proxy CA in production).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from shared.core.errors import ConfigError


def client_context(extra_ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if Path(paths.openssl_cafile).is_file() else None
    capath = paths.openssl_capath if Path(paths.openssl_capath).is_dir() else None
    if cafile or capath:
        context.load_verify_locations(cafile=cafile, capath=capath)
    if extra_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(extra_ca_file))
        except (OSError, ssl.SSLError) as exc:
            # Settings checked that the file exists; here it is unreadable or holds no CA.
            ssl_reason = getattr(exc, "reason", None)
            reason = (
                ssl_reason.replace("_", " ").lower()
                if isinstance(ssl_reason, str)
                else (exc.strerror or type(exc).__name__)
            )
            raise ConfigError(
                [
                    f"SSL_CERT_FILE={str(extra_ca_file)!r} cannot be loaded ({reason}): "
                    "give a readable PEM file of CA certificates"
                ]
            ) from None
    # PROTOCOL_TLS_CLIENT already sets these; stated so nobody "fixes" them off.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context
