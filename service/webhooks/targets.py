"""Which callback URLs the service will POST to, and at which address.

http(s) only, no credentials in the URL, and no private, loopback, link-local
or otherwise non-public address unless WEBHOOK_ALLOW_PRIVATE_NETWORKS allows
them: a callback must not become a way to reach the service's own network.
A name is checked by what it resolves to when the URL is given, and again
before every attempt, which then connects to an address it has just checked
(never to a second look-up's answer, which could differ: DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

import httpx

MAX_URL_LENGTH = 2048
# what the OpenAPI document can say of a callback URL; the rest is checked here
CALLBACK_URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$"
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT


class CallbackRefused(ValueError):
    """The URL or its address is not one the service sends events to."""


def _parts(url: str) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"the callback URL is longer than {MAX_URL_LENGTH} characters")
    if any(not ("!" <= char <= "~") for char in url):
        raise CallbackRefused("the callback URL must be printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)  # what the sender will parse: refuse here what it would refuse
    except (ValueError, httpx.InvalidURL) as exc:
        raise CallbackRefused(f"the callback URL is malformed ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused("the callback URL must be http or https")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("the callback URL must not carry credentials")
    if not parts.hostname:
        raise CallbackRefused("the callback URL has no host")
    if "%" in parts.hostname:
        raise CallbackRefused("the callback URL's host must not be percent-encoded")
    if port == 0:
        raise CallbackRefused("the callback URL's port must not be 0")
    if parts.fragment:
        raise CallbackRefused("the callback URL must not have a fragment")
    return parts


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in network for network in (IPV4_COMPATIBLE, IPV4_TRANSLATED, NAT64)):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
        if address.is_site_local:
            return False
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


def _checked(url: str, allow_private: bool) -> tuple[SplitResult, str, list[IpAddress], bool]:
    """(parts, host, its checked addresses, whether the host is an IP literal).
    Raises CallbackRefused for the URL or any of its addresses."""
    parts = _parts(url)
    host = (parts.hostname or "").rstrip(".")
    literal = _literal(host)
    if literal is not None:
        _check_address(literal, allow_private)
        return parts, host, [literal], True
    if not allow_private and host.lower().endswith("localhost"):
        raise CallbackRefused("the callback URL's host is loopback")
    addresses = resolve_host(host, parts.port)
    for address in addresses:
        _check_address(address, allow_private)
    return parts, host, addresses, False


def check_callback_url(url: str, allow_private: bool) -> None:
    """Raises CallbackRefused. Blocking (a DNS look-up): run it in a thread.
    A name that does not resolve now is accepted; each attempt checks again."""
    _checked(url, allow_private)


def resolve_host(host: str, port: int | None) -> list[IpAddress]:
    try:
        infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def pinned_request(url: str, allow_private: bool) -> tuple[str, dict[str, str], dict[str, str]]:
    """For one attempt: (URL to connect to, extra headers, httpx extensions).

    The name is resolved and every address checked; the request goes to the
    first address, with the name kept in `Host` and, for https, in SNI and the
    certificate check. Blocking: run it in a thread. Raises CallbackRefused."""
    parts, host, addresses, literal = _checked(url, allow_private)
    if literal:
        return url, {}, {}
    if not addresses:
        raise CallbackRefused(f"the callback URL's host {host} does not resolve")
    pinned = httpx.URL(url).copy_with(host=str(addresses[0]))
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return str(pinned), {"host": host_header}, extensions
