"""Connecting to a remote Temporal over mutual TLS, as to a cluster or Temporal Cloud: the dev server behind a TLS
proxy on loopback that asks for a client certificate from a test CA."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import SecretStr
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from client import connect, tls_config
from settings import Settings


@pytest.fixture
def dev_server(dev_env: WorkflowEnvironment) -> str:
    return dev_env.client.service_client.config.target_host


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def tls_proxy(dev_server: str, tmp_path: Path) -> AsyncIterator[tuple[str, trustme.CA]]:
    """A TLS endpoint (HTTP/2 by ALPN, client certificate required) in front of the dev server."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, _, port = dev_server.rpartition(":")

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
    async with server:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", ca


def settings_for(address: str, ca: trustme.CA, folder: Path, *, client_cert: bool) -> Settings:
    (folder / "ca.pem").write_bytes(ca.cert_pem.bytes())
    fields: dict[str, Any] = {"temporal_tls_ca": folder / "ca.pem", "temporal_tls_server_name": "localhost"}
    if client_cert:
        issued = ca.issue_cert("notify-worker")
        (folder / "client.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        (folder / "client.key").write_bytes(issued.private_key_pem.bytes())
        fields.update(temporal_tls_cert=folder / "client.pem", temporal_tls_key=folder / "client.key")
    return Settings(_env_file=None, temporal_address=address, **fields)


async def test_mutual_tls_with_a_client_certificate(tls_proxy: tuple[str, trustme.CA], tmp_path: Path) -> None:
    address, ca = tls_proxy
    settings = settings_for(address, ca, tmp_path, client_cert=True).model_copy(
        update={"temporal_api_key": SecretStr("a-key")}
    )
    client = await connect(settings)
    assert client.api_key == "a-key"
    assert await client.service_client.check_health()
    assert await client.count_workflows() is not None


async def test_without_a_client_certificate_the_server_refuses(
    tls_proxy: tuple[str, trustme.CA], tmp_path: Path
) -> None:
    address, ca = tls_proxy
    with pytest.raises(ConnectionError, match=f"cannot reach Temporal at {address}"):
        await connect(settings_for(address, ca, tmp_path, client_cert=False))


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="temporal_tls_cert and temporal_tls_key go together"):
        Settings(_env_file=None, temporal_tls_cert=tmp_path / "client.pem")


def test_an_api_key_means_tls(tmp_path: Path) -> None:
    """Temporal Cloud's API keys go over TLS; nothing else needs to be said."""
    assert tls_config(Settings(_env_file=None)) is False
    tls = tls_config(Settings(_env_file=None, temporal_api_key="a-key"))
    assert isinstance(tls, TLSConfig) and tls.client_cert is None
