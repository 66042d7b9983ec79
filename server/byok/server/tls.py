"""TLS for both doors from BYOK_TLS_CERT / BYOK_TLS_KEY (PEM files)."""

from __future__ import annotations

import grpc

from byok.server.config import Settings


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    assert settings.tls_cert is not None and settings.tls_key is not None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
    )


def uvicorn_ssl(settings: Settings) -> tuple[str, str]:
    assert settings.tls_cert is not None and settings.tls_key is not None
    return str(settings.tls_cert), str(settings.tls_key)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials:
    """For the gateway's local channel to the gRPC door: trusts the server's own cert."""
    assert settings.tls_cert is not None
    return grpc.ssl_channel_credentials(root_certificates=settings.tls_cert.read_bytes())
