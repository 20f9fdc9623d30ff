"""Where a caller's ``callback_url`` may lead: never inside.

A message's ``callback_url`` is chosen by whoever holds an API key, and a worker POSTs to it,
so without care it reaches Redis on loopback, the simulator's admin API, a cloud's metadata
service (169.254.169.254, 100.100.100.200, fd00:ec2::254) or any private host. The rules:

- At the door (:func:`door_problem`): a host that is an address in any spelling (dotted, the
  integer ``2130706433``, hex ``0x7f000001``, short ``127.1``, IPv6, IPv4-mapped IPv6) or a
  ``localhost`` name is refused when the address is not allowed.
- At delivery (:func:`resolve`): the name is resolved, every address it gives must be allowed,
  and the connection goes to the address that was checked (``workers.notifications.post``
  opens the socket itself, with TLS still verified against the name), so a DNS answer that
  changes in between (rebinding) cannot slip through. Redirects are never followed.

Allowed means a global unicast address. ``SMSGW_CALLBACK_ALLOW_NETWORKS`` may open private
ranges an operator chooses (an internal services subnet); loopback, link-local (metadata),
multicast, unspecified and the known metadata addresses stay refused whatever it says.
``SMSGW_CALLBACK_HOSTS`` narrows the names further. ``SMSGW_CALLBACK_ALLOW_LOOPBACK=1`` opens
loopback and ``localhost`` for a receiver on a developer's machine (``make run`` turns it on); it
is a development default, which ``smsgw api`` and ``smsgw worker`` refuse in production.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254"))


class Refused(ValueError):
    """The URL leads somewhere a callback may not go; the message says why (no secrets)."""


def parse_address(host: str) -> IPAddress | None:
    """``host`` as an address if it is one in any spelling inet_aton or IPv6 accept, else None."""
    bare = host.strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(bare))  # 2130706433, 0x7f000001, 127.1
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address):
        return embedded_ipv4(address) or address
    return address


#: IPv6 prefixes whose last 32 bits are an IPv4 address the packet ends up at: IPv4-mapped,
#: IPv4-compatible (deprecated, still routed by some stacks), SIIT, and NAT64's well-known and
#: local-use prefixes. Such an address is judged by the IPv4 address it carries.
EMBEDS_IPV4 = tuple(
    ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in EMBEDS_IPV4[1] and int(address) <= 1:
        return None  # :: and ::1 are themselves (unspecified, loopback)
    if any(address in net for net in EMBEDS_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def never(address: IPAddress, loopback: bool = False) -> bool:
    """Addresses no setting opens (loopback: only the development setting
    ``SMSGW_CALLBACK_ALLOW_LOOPBACK``, which a production process refuses to start with)."""
    return (
        address in METADATA
        or (address.is_loopback and not loopback)
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None)
    )


def allowed(address: IPAddress, networks: Sequence[Network] = (), loopback: bool = False) -> bool:
    if never(address, loopback):
        return False
    return address.is_global or (loopback and address.is_loopback) or any(address in net for net in networks)


def door_problem(host: str, networks: Sequence[Network] = (), loopback: bool = False) -> str | None:
    """What can be refused before anything is queued: literal addresses and local names."""
    name = host.lower().rstrip(".")
    if (name == "localhost" or name.endswith(".localhost")) and not loopback:
        return "names this machine (for a receiver on your own machine in development: SMSGW_CALLBACK_ALLOW_LOOPBACK=1)"
    address = parse_address(name)
    if address is not None and not allowed(address, networks, loopback):
        return (
            f"is {address}, an address callbacks may not reach (loopback, private, link-local or metadata;"
            " SMSGW_CALLBACK_ALLOW_NETWORKS opens a private range)"
        )
    return None


def resolve(host: str, port: int, networks: Sequence[Network] = (), *, loopback: bool = False) -> str:
    """The address to connect to for ``host``: every address it resolves to must be allowed."""
    problem = door_problem(host, networks, loopback)
    if problem is not None:
        raise Refused(f"callback host {problem}")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise Refused(f"callback host does not resolve ({type(e).__name__})") from None
    addresses = [parse_address(str(info[4][0])) for info in infos]
    if not addresses or any(a is None or not allowed(a, networks, loopback) for a in addresses):
        raise Refused("callback host resolves to an address callbacks may not reach")
    return str(addresses[0])


def parse_networks(raw: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())
