"""Replica discovery: a configured service URL whose host name resolves to several addresses is several replicas.

``docker compose up --scale inference-gguf=3`` and a Kubernetes headless Service both publish one DNS name with an
address per container. :func:`expand` resolves the URL's host (through an aiohttp resolver: the system's
``getaddrinfo`` by default, or c-ares against ``GATEWAY_DNS_NAMESERVERS``) and returns one URL per address, with the
address in place of the name, so that per-replica health, least-busy routing, the circuit breaker and load/unload
apply per container. The registry calls it on every refresh, so containers that come and go are followed.

Not expanded: URLs whose host is already an IP address, and https URLs (certificates name the host, not its
addresses); those stay one replica each.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver

__all__ = ["AddressPool", "expand", "make_resolver"]


def make_resolver(nameservers: list[str]) -> AbstractResolver:
    """The system resolver (``getaddrinfo`` on a thread), or c-ares asking ``nameservers`` ("ip" or "ip:port")."""
    if nameservers:
        return aiohttp.AsyncResolver(nameservers=nameservers)
    return aiohttp.ThreadedResolver()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def expand(url: str, resolver: AbstractResolver) -> list[str]:
    """One URL per address ``url``'s host resolves to, in a stable (sorted) order; ``[url]`` when not expandable.

    Raises ``OSError`` when the name does not resolve (the caller keeps what it knew and reports the error)."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme != "http" or host is None or _is_address(host):
        return [url]
    port = parts.port or 80
    results = await resolver.resolve(host, port, family=socket.AF_UNSPEC)
    addresses = sorted({r["host"] for r in results}, key=lambda a: (":" in a, a))
    if not addresses:
        raise OSError(f"'{host}' resolved to no address")
    netlocs = [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]
    return [urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)) for netloc in netlocs]


class AddressPool:
    """The addresses of one helper service's URL (the retriever's read replicas, the history service): one URL
    per container of a scaled service, taken in turn so that requests spread over them (a pooled keep-alive
    connection would otherwise keep them on one). :meth:`refresh` re-resolves; until the first success, and
    while the name does not resolve, the configured URL itself is used (its connection error says why)."""

    def __init__(self, url: str, resolver: AbstractResolver) -> None:
        self.url = url
        self.urls = [url]
        self._resolver = resolver
        self._turn = itertools.count()

    async def refresh(self) -> None:
        try:
            self.urls = await expand(self.url, self._resolver)
        except (OSError, aiohttp.ClientError):
            pass  # keep what was known: a container that is gone fails its connection and the next is asked

    def order(self) -> list[str]:
        """Every address, starting with the next one in turn."""
        start = next(self._turn) % len(self.urls)
        return self.urls[start:] + self.urls[:start]
