"""Which addresses triage may probe for a tenant (the SSRF guard), as pure decisions.

A probe goes only to addresses the tenant registered: its allow-list holds IP addresses and
CIDR networks, and every address a target's name resolves to must fall inside one of them.
Link-local addresses and the cloud metadata services are refused even when listed: nothing a
customer runs lives there, and they hand out credentials. Loopback and private networks are
allowed only when listed explicitly (the demo lists 127.0.0.1 on purpose).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)


class AllowListError(ValueError):
    pass


def parse_allowlist(entries: Sequence[str]) -> list[Network]:
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise AllowListError(
                f"probe allow-list entry {entry!r} is not an IP address or CIDR network (e.g. 203.0.113.0/24)"
            ) from None
    return networks


@dataclass(frozen=True)
class AddressCheck:
    allowed: bool
    reason: str


def check_address(address: IPAddress, allowlist: Sequence[Network]) -> AddressCheck:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA:
        return AddressCheck(False, f"{address} is a cloud metadata address; never probed")
    if address.is_link_local:
        return AddressCheck(False, f"{address} is link-local; never probed")
    if address.is_unspecified or address.is_multicast:
        return AddressCheck(False, f"{address} is not a host address")
    for network in allowlist:
        if address.version == network.version and address in network:
            return AddressCheck(True, f"{address} is in the tenant's allow-list ({network})")
    kind = "loopback" if address.is_loopback else "private" if address.is_private else "an address"
    return AddressCheck(False, f"{address} is {kind} not on the tenant's probe allow-list")


def check_addresses(addresses: Sequence[IPAddress], allowlist: Sequence[Network]) -> AddressCheck:
    """Every resolved address must be allowed: a name that resolves to one listed and one
    unlisted address could be steered to the unlisted one."""
    if not addresses:
        return AddressCheck(False, "the name resolves to no address")
    for address in addresses:
        verdict = check_address(address, allowlist)
        if not verdict.allowed:
            return verdict
    return AddressCheck(True, f"{', '.join(str(a) for a in addresses)} on the allow-list")
