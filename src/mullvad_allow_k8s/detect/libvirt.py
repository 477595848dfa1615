"""minikube's kvm2 driver: its libvirt networks mk-<profile> on qemu:///system.

Only root's system connection is asked (never a URI from a file: libvirt's ext, ssh and
libssh transports run programs), and only networks named as minikube names them.
"""

from __future__ import annotations

from xml.etree import ElementTree

import netaddr

from .boundary import NAME
from .host import NODES, DetectError, Found, Host
from .parse import cidr, interface

SYSTEM_URI = "qemu:///system"
PREFIX = "mk-"  # minikube's kvm2 driver: network.go, "mk-" + the profile's name


def minikube_kvm2(host: Host) -> list[Found]:
    found: list[Found] = []

    def names() -> list[str]:
        out = host.run("virsh", "--connect", SYSTEM_URI, "net-list", "--all", "--name")
        return [
            n.strip()
            for n in (out or "").splitlines()
            if n.strip().startswith(PREFIX) and NAME.fullmatch(n.strip())
        ]

    def read(name: str) -> list[Found]:
        xml = host.run("virsh", "--connect", SYSTEM_URI, "net-dumpxml", name)
        if xml is None or not xml.strip():
            return []
        return _libvirt_network(xml, f"virsh net-dumpxml {name}")

    listed: list[str] = []

    def list_step() -> list[Found]:
        listed.extend(names())
        return []

    host.guard(list_step)
    for name in listed:

        def step(name: str = name) -> list[Found]:
            return read(name)

        found.extend(host.guard(step) or [])
    return found


def _libvirt_network(xml: str, where: str) -> list[Found]:
    """libvirt's network XML: <bridge name=.../> and its <ip> elements (v4 and v6)."""
    try:
        network = ElementTree.fromstring(xml)
    except ElementTree.ParseError as e:
        raise DetectError(where, f"not valid XML: {e}") from None
    if network.tag != "network":
        raise DetectError(where, f"root element <{network.tag}>, expected <network>")
    name = network.findtext("name") or ""
    element = network.find("bridge")
    bridge = interface(element.get("name") if element is not None else None, where, "<bridge>")
    found = []
    for i, ip in enumerate(network.findall("ip")):
        address = ip.get("address")
        if not address:
            continue
        prefix = ip.get("prefix")
        netmask = ip.get("netmask")
        what = f"{name} <ip> #{i + 1}"
        if prefix is None and netmask is not None:
            try:
                prefix = str(netaddr.IPAddress(netmask).netmask_bits())
            except (netaddr.AddrFormatError, ValueError):
                raise DetectError(where, f"{what}: netmask {netmask!r} is not a netmask") from None
        if prefix is None:  # libvirt's defaults: /24 for IPv4, /64 for IPv6
            prefix = "64" if ":" in address else "24"
        found.append(
            Found(
                "minikube",
                NODES,
                cidr(f"{address}/{prefix}", where, what),
                bridge,
                f"{where}: <ip address='{address}'>",
            )
        )
    return found
