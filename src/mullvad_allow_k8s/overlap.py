"""Cluster ranges that overlap a network of this machine outside the cluster.

`POD_CIDRS=192.168.1.0/24` on a machine whose LAN is 192.168.1.0/24 would make every
LAN device a "pod": its connections would be exempted like a pod's. Such a setting is
a mistake, and it must never become a leak: `apply` refuses it, `doctor` reports it,
`generate` (which may run where the target machine is not, as in Nix builds) warns.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

import netaddr

from .settings import Network, Settings, SettingsError


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether an interface name matches a CLUSTER_INTERFACES entry (NAME or PREFIX*)."""
    return any(fnmatchcase(name, p) if p.endswith("*") else name == p for p in patterns)


def lan_overlaps(
    settings: Settings, networks: Iterable[tuple[str, Network]]
) -> list[SettingsError]:
    """One error per cluster range overlapping a network configured on a non-cluster
    interface (the tunnel and loopback aside: Mullvad's own addresses are protected
    separately, and loopback is never a LAN)."""
    errors: list[SettingsError] = []
    for ifname, network in networks:
        if ifname in ("lo", settings.tunnel_interface) or matches(
            ifname, settings.cluster_interfaces
        ):
            continue
        if network.is_link_local() or network.prefixlen == (32 if network.version == 4 else 128):
            continue  # fe80::/64 is on every interface; a /32 or /128 is no network
        lan = netaddr.IPSet([network.cidr])
        for key, ranges in (
            ("POD_CIDRS", settings.pod_cidrs),
            ("SERVICE_CIDRS", settings.service_cidrs),
        ):
            for cidr in ranges:
                if cidr.version == network.version and netaddr.IPSet([cidr]) & lan:
                    errors.append(
                        SettingsError(
                            key,
                            str(cidr),
                            f"overlaps {network.cidr}, the network of {ifname}, which is not "
                            "a cluster interface: its devices would pass for cluster "
                            "addresses (use the cluster's real ranges, or add the "
                            "interface to CLUSTER_INTERFACES if it carries the cluster)",
                        )
                    )
    return errors
