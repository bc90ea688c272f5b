"""Which callback URLs the service will POST to.

http(s) only, no credentials in the URL, and no private, loopback, link-local
or otherwise non-public address unless WEBHOOK_ALLOW_PRIVATE_NETWORKS allows
them: a callback must not become a way to reach the service's own network.
A name is checked by what it resolves to, when it is given and again before
every attempt (its addresses may change in between).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048
# what the OpenAPI document can say of a callback URL; the rest is checked here
CALLBACK_URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$"
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(ValueError):
    """The URL or its address is not one the service sends events to."""


def _parts(url: str) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"the callback URL is longer than {MAX_URL_LENGTH} characters")
    if any(not ("!" <= char <= "~") for char in url):
        raise CallbackRefused("the callback URL must be printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise CallbackRefused(f"the callback URL is malformed ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused("the callback URL must be http or https")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("the callback URL must not carry credentials")
    if not parts.hostname:
        raise CallbackRefused("the callback URL has no host")
    if parts.fragment:
        raise CallbackRefused("the callback URL must not have a fragment")
    return parts


def is_public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    return address.is_global and not address.is_multicast


def _check_address(address: IpAddress, allow_private: bool) -> None:
    if not allow_private and not is_public(address):
        raise CallbackRefused(
            f"the callback URL's address {address} is private, loopback or link-local"
        )


def _literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_callback_url(url: str, allow_private: bool, resolve: bool = True) -> None:
    """Raises CallbackRefused. Blocking when `resolve` (a DNS look-up): run it in a
    thread. A name that does not resolve now is accepted; each attempt checks again."""
    parts = _parts(url)
    host = parts.hostname or ""
    literal = _literal(host)
    if literal is not None:
        _check_address(literal, allow_private)
        return
    if not allow_private and host.rstrip(".").lower().endswith("localhost"):
        raise CallbackRefused("the callback URL's host is loopback")
    if resolve:
        for address in resolve_host(host, parts.port):
            _check_address(address, allow_private)


def resolve_host(host: str, port: int | None) -> list[IpAddress]:
    try:
        infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
