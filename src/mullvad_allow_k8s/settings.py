"""The settings schema: one table of fields that every front end reads from.

Flags, the KEY=VALUE settings file, debconf answers and the Nix module's JSON all
arrive here as raw strings keyed by the schema's KEY, are merged (later sources win)
and validated once with netaddr. Any bad value raises SettingsError, whose text is the
one-line message users see; nothing downstream ever sees unvalidated text, which is
what keeps nft syntax from being smuggled into the generated file.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import netaddr

from . import marks
from .presets import FALLBACK_PRESET, PRESETS, Preset

if TYPE_CHECKING:  # detect's imports cost start-up time; only `auto` needs them
    from .detect import DetectError, Found

# What `auto` reads: the detected ranges and the errors met reading them (detect.detect).
Detection: TypeAlias = "tuple[Sequence[Found], Sequence[DetectError]]"

AUTO = "auto"
NONE = "none"
CUSTOM_PRESET = "custom"
DEFAULT_OUTPUT = "/etc/nftables.d/k8s_bypass_mullvad.nft"
# Linux interface names: at most 15 bytes; we accept the conservative portable subset.
# The origin line's words when PRESET=auto finds no cluster (doctor warns on it).
NO_CLUSTER_FOUND = "no cluster found"
# Begins an origin line for a source detection ignored (not root's to decide from).
IGNORED_SOURCE = "ignored source:"
# PRESET's values, in the order front ends offer them (debconf's select, Nix's enum).
PRESET_CHOICES: tuple[str, ...] = (AUTO, *PRESETS, CUSTOM_PRESET)
IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
# A name, or a prefix with a trailing * (never a bare *: that would match everything).
_IFPATTERN = re.compile(r"[A-Za-z0-9_.-]{1,15}|[A-Za-z0-9_.-]{1,14}\*")
_PATH = re.compile(r"/[A-Za-z0-9_./+@-]*")
_TRUE = {"yes", "true", "1", "on"}
_FALSE = {"no", "false", "0", "off", ""}


class SettingsError(ValueError):
    """A setting's value is unusable; str() is the one-line message for the user."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{key}: {value!r}: {reason}")


class Field(NamedTuple):
    """One setting: its KEY (settings file, JSON, debconf), default and help text."""

    key: str
    kind: str
    default: str
    help: str
    asked: bool = False  # a debconf question exists for it

    @property
    def flag(self) -> str:
        """The CLI flag, derived so it can never drift from the KEY."""
        return "--" + self.key.lower().replace("_", "-")

    @property
    def nix_option(self) -> str:
        """The NixOS option name under services.mullvadAllowK8s (camelCase of KEY)."""
        head, *rest = self.key.lower().split("_")
        return head + "".join(part.capitalize() for part in rest)


SCHEMA: tuple[Field, ...] = (
    Field(
        "PRESET",
        "choice",
        AUTO,
        "Kubernetes distribution whose defaults fill the ranges that are not given or "
        f"detected: {', '.join(PRESETS)}, {CUSTOM_PRESET} (no defaults) or '{AUTO}': the "
        "distributions found running on this machine (their config files, the container "
        f"engines' and libvirt's networks), {FALLBACK_PRESET}'s defaults if none is found.",
        asked=True,
    ),
    Field(
        "POD_CIDRS",
        "cidrs",
        AUTO,
        f"Pod network ranges (IPv4 and/or IPv6, space separated). '{AUTO}': the ranges the "
        "running cluster's configuration names (`settings` shows where each was read), "
        "else the preset's. Empty: the preset's.",
        asked=True,
    ),
    Field(
        "SERVICE_CIDRS",
        "cidrs",
        AUTO,
        f"Service (ClusterIP) ranges (IPv4 and/or IPv6). '{AUTO}': detected, else the "
        "preset's. Empty: the preset's.",
        asked=True,
    ),
    Field(
        "NODE_NETWORKS",
        "nodenets",
        AUTO,
        "Node networks of clusters in containers or VMs (kind, k3d, minikube's docker and "
        "kvm2 drivers), as CIDR@INTERFACE (the bridge, or a NAME* pattern). This machine "
        "may reach the nodes there (kubectl), and connections forwarded to a node (kind's "
        "extraPortMappings), traffic between the nodes on that bridge and their DNS to "
        "its gateway are exempted; the nodes' other traffic is not. "
        f"'{AUTO}': the networks found (each bound to its own bridge), else the preset's "
        f"first-choice subnet; '{NONE}': none.",
        asked=True,
    ),
    Field(
        "MACHINE_ADDRESSES",
        "addresses",
        AUTO,
        "Addresses of this machine on which HOST_PORTS are reachable. "
        f"'{AUTO}': any address configured on the interface a connection arrives on "
        "(except the tunnel), checked per packet, so DHCP changes need no "
        "regeneration. Or a list of addresses.",
        asked=True,
    ),
    Field(
        "PUBLIC_ADDRESSES",
        "addresses",
        "",
        "Extra addresses routed to this machine, not configured on the incoming "
        "interface (e.g. a public address on lo), on which HOST_PORTS are reachable "
        "too. Optional.",
        asked=True,
    ),
    Field(
        "HOST_PORTS",
        "ports",
        "",
        "TCP ports of cluster services that run on this machine itself (not in pods) "
        "and must be reachable from the LAN or the internet: the API server. Empty: the "
        "preset's ("
        + "; ".join(
            f"{p.name} {' '.join(map(str, p.host_ports)) or NONE}" for p in PRESETS.values()
        )
        + f"); '{NONE}': none. NodePorts, hostPorts, LoadBalancer and "
        "external IPs need no entry: a connection that kube-proxy or the CNI forwards "
        "into a pod is exempted whatever port it came in on. Any other service of this "
        "machine (sshd, CUPS, a database) stays under Mullvad's rules.",
        asked=True,
    ),
    Field(
        "TUNNEL_INTERFACE",
        "ifname",
        str(marks.TUNNEL_INTERFACE.value),
        "Mullvad's tunnel interface; traffic arriving on it is never exempted.",
    ),
    Field(
        "CLUSTER_INTERFACES",
        "ifnames",
        " ".join(marks.CLUSTER_INTERFACES),
        "Interfaces cluster traffic may leave by (a trailing * matches any suffix): CNI "
        "bridges, veths and overlays, container engines' and libvirt's bridges (nodes of "
        "container and VM clusters). An exempted flow to a cluster address routed "
        "elsewhere (no such pod or service here, so the default route) loses the "
        "exemption. Add the LAN interface only for host-gw style multi-node clusters.",
    ),
    Field(
        "OUTPUT",
        "path",
        DEFAULT_OUTPUT,
        "Where the generated ruleset is written.",
    ),
    Field(
        "BRIDGE_TABLE",
        "bool",
        "no",
        "Also mark bridged pod traffic in a bridge-family table. Needs a kernel with "
        "nf_conntrack_bridge; not needed with br_netfilter, which Kubernetes enables.",
    ),
)
FIELDS: dict[str, Field] = {f.key: f for f in SCHEMA}


# Keys of earlier versions, each with what became of it. Reading a file or JSON that
# still has one is not an error: `migrate` turns it into the current settings (and
# `settings --migrate` rewrites the file), saying so once.
RETIRED: dict[str, str] = {
    "INBOUND_PORTS": "0.2.0: new inbound connections are exempted only when the cluster "
    "serves them (forwarded into a pod by kube-proxy or the CNI) or when they are for "
    "HOST_PORTS; an explicit port list becomes HOST_PORTS",
    "EPHEMERAL_PORTS": "0.2.0: no longer needed, only new inbound connections are judged",
}
OLD_INBOUND_DEFAULT = "non-ephemeral"


# netaddr ships no type information: its objects are Any to mypy, named here for readers.
Network: TypeAlias = Any  # netaddr.IPNetwork
Address: TypeAlias = Any  # netaddr.IPAddress
PortRange: TypeAlias = tuple[int, int]
NodeNetwork: TypeAlias = tuple[Any, str]  # (netaddr.IPNetwork, interface name or NAME*)


class Settings(NamedTuple):
    """Validated, merged settings with every default resolved."""

    preset: str
    pod_cidrs: tuple[Network, ...]
    service_cidrs: tuple[Network, ...]
    node_networks: tuple[NodeNetwork, ...]
    machine_addresses: tuple[Address, ...] | None  # None: auto
    public_addresses: tuple[Address, ...]
    host_ports: tuple[PortRange, ...]  # () : none
    tunnel_interface: str
    cluster_interfaces: tuple[str, ...]
    output: str
    bridge_table: bool
    # Where `auto` values came from, one line each (not settings: not in as_strings).
    origins: tuple[str, ...] = ()

    def as_strings(self) -> dict[str, str]:
        """Canonical KEY=VALUE form (sorted, merged), used for headers and read-back."""
        machine = AUTO if self.machine_addresses is None else _join(self.machine_addresses)
        return {
            "PRESET": self.preset,
            "POD_CIDRS": _join(self.pod_cidrs),
            "SERVICE_CIDRS": _join(self.service_cidrs),
            "NODE_NETWORKS": _node_text(self.node_networks) or NONE,
            "MACHINE_ADDRESSES": machine,
            "PUBLIC_ADDRESSES": _join(self.public_addresses),
            "HOST_PORTS": _ports(self.host_ports) or NONE,
            "TUNNEL_INTERFACE": self.tunnel_interface,
            "CLUSTER_INTERFACES": " ".join(self.cluster_interfaces),
            "OUTPUT": self.output,
            "BRIDGE_TABLE": "yes" if self.bridge_table else "no",
        }


def _join(items: Iterable[object]) -> str:
    return " ".join(str(i) for i in items)


def _node_text(nodes: Iterable[NodeNetwork]) -> str:
    return " ".join(f"{net}@{iface}" for net, iface in nodes)


def _ports(ranges: Iterable[PortRange]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def migrate(raw: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """One source's values with retired keys turned into current ones, and a note each.

    The old default (INBOUND_PORTS=non-ephemeral) simply goes: the new model is the
    default. A port list a user wrote keeps working as HOST_PORTS, unless HOST_PORTS is
    set too, which then wins.
    """
    out = {k: v for k, v in raw.items() if k not in RETIRED}
    notes: list[str] = []
    for key in (k for k in raw if k in RETIRED):
        value = raw[key].strip()
        note = f"{key}={value!r} is retired ({RETIRED[key]})"
        if key == "INBOUND_PORTS" and value.lower() not in ("", OLD_INBOUND_DEFAULT):
            if "HOST_PORTS" in raw:
                note += "; HOST_PORTS is set too and wins"
            else:
                out["HOST_PORTS"] = value
                note += f"; now HOST_PORTS={value!r}"
        notes.append(note)
    return out, notes


# ---------------------------------------------------------------- sources


def parse_settings_file(text: str, origin: str = "settings file") -> dict[str, str]:
    """Parse a KEY=VALUE file (shell quoting allowed, # comments) into raw values."""
    raw: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or (key not in FIELDS and key not in RETIRED):
            what = "unknown setting" if sep else "not a KEY=VALUE line"
            raise SettingsError(f"{origin} line {number}", stripped, what)
        try:
            words = shlex.split(value, comments=True)
        except ValueError as err:
            raise SettingsError(key, value, f"cannot parse quoting ({err})") from None
        raw[key] = " ".join(words)
    return raw


def parse_json(text: str) -> dict[str, str]:
    """Parse the JSON form (the Nix module's) into raw values; lists become words."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SettingsError("JSON", text[:40], f"not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise SettingsError("JSON", text[:40], "must be an object of KEY: value")
    raw: dict[str, str] = {}
    for key, value in data.items():
        if key not in FIELDS and key not in RETIRED:
            raise SettingsError(str(key), value, "unknown setting")
        raw[key] = _json_value(key, value)
    return raw


def _json_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return " ".join(str(v) for v in value)
    raise SettingsError(key, value, "must be a string, number, boolean or list of strings")


# ---------------------------------------------------------------- validation


def _words(value: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", value.strip()) if w]


def _parse_ip(key: str, word: str) -> Address:
    try:
        return netaddr.IPAddress(word, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise SettingsError(key, word, "not an IPv4 or IPv6 address") from None


def _parse_cidr(key: str, word: str) -> Network:
    address, slash, prefix = word.partition("/")
    if not slash or not prefix.isdigit():
        raise SettingsError(key, word, "not a CIDR range (ADDRESS/PREFIX)")
    ip = _parse_ip(key, address)
    # The address family's width: netaddr's netmask_bits() reads fc00:: as a netmask.
    width = 32 if ip.version == 4 else 128
    if int(prefix) > width or len(prefix) > 3:
        raise SettingsError(key, word, f"prefix length must be 0-{width}")
    net = netaddr.IPNetwork(f"{ip}/{int(prefix)}")
    if net.ip != net.network:
        raise SettingsError(key, word, f"host bits set (did you mean {net.cidr}?)")
    return net


@cache
def _private() -> Any:
    return netaddr.IPSet(marks.PRIVATE_RANGES)


@cache
def protected() -> Any:
    """Mullvad's addresses as an IPSet (built on first use: it costs import time)."""
    return netaddr.IPSet(marks.PROTECTED_V4 + marks.PROTECTED_V6)


def _cluster_cidrs(key: str, value: str) -> tuple[Network, ...]:
    nets = [_parse_cidr(key, w) for w in _words(value)]
    for net in nets:
        if net.prefixlen == 0:
            raise SettingsError(key, str(net), "covers the whole address space")
        if not netaddr.IPSet([net]).issubset(_private()):
            raise SettingsError(
                key,
                str(net),
                "not a private range (cluster ranges must lie in "
                + ", ".join(marks.PRIVATE_RANGES)
                + ")",
            )
        clash = netaddr.IPSet([net]) & protected()
        if clash:
            raise SettingsError(
                key,
                str(net),
                f"covers Mullvad's own addresses ({clash.iter_cidrs()[0]}: "
                "in-tunnel gateway/resolver), which must stay inside the tunnel",
            )
    return tuple(sorted(netaddr.cidr_merge(nets), key=_net_key))


def _net_key(net: Network) -> tuple[int, int, int]:
    return (net.version, int(net.first), net.prefixlen)


def _addresses(key: str, value: str) -> tuple[Address, ...]:
    out: set[Address] = set()
    for word in _words(value):
        ip = _parse_ip(key, word.removesuffix("/32") if "." in word else word.removesuffix("/128"))
        bad = (
            "a loopback"
            if ip.is_loopback()
            else "a multicast"
            if ip.is_multicast()
            else "a link-local"
            if ip.is_link_local()
            else "the unspecified"
            if int(ip) == 0
            else None
        )
        if bad:
            raise SettingsError(key, word, f"{bad} address cannot be a machine address")
        if ip in protected():
            raise SettingsError(key, word, "is one of Mullvad's in-tunnel addresses")
        out.add(ip)
    return tuple(sorted(out, key=lambda a: (a.version, int(a))))


def _port_ranges(key: str, value: str) -> tuple[PortRange, ...]:
    ranges: list[PortRange] = []
    for word in _words(value):
        match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", word)
        if not match:
            raise SettingsError(key, word, "not a port or port range (e.g. 6443 or 30000-32767)")
        lo = int(match.group(1))
        hi = int(match.group(2) or lo)
        if not 1 <= lo <= hi <= 65535:
            raise SettingsError(key, word, "ports must be 1-65535, low-high")
        ranges.append((lo, hi))
    if not ranges:
        raise SettingsError(key, value, "no ports given")
    ranges.sort()
    merged: list[PortRange] = [ranges[0]]
    for lo, hi in ranges[1:]:
        last_lo, last_hi = merged[-1]
        if lo <= last_hi + 1:
            merged[-1] = (last_lo, max(hi, last_hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _bool(key: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise SettingsError(key, value, "must be yes or no")


def _single(key: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value):
        raise SettingsError(key, value, what)
    return value


def resolve(
    raw_sources: Iterable[Mapping[str, str]],
    detect: Callable[[], Detection] | None = None,
) -> Settings:
    """Merge raw sources (later wins) over the schema defaults and validate them.

    `detect` reads the machine (detect.detect) and is called only if a value is auto;
    without it nothing is detected, so the presets' defaults apply. Sources must be
    migrated already (see `migrate`): a retired key is an error here.
    """
    raw = {f.key: f.default for f in SCHEMA}
    for source in raw_sources:
        for key, value in source.items():
            if key not in FIELDS:
                reason = f"retired ({RETIRED[key]})" if key in RETIRED else "unknown setting"
                raise SettingsError(key, value, reason)
            raw[key] = value
    given = {k: v.strip() for k, v in raw.items()}
    tunnel = check_ifname("TUNNEL_INTERFACE", given["TUNNEL_INTERFACE"])
    plan = _plan(given, detect)
    cidrs = {key: _cluster_cidrs(key, plan.values[key]) for key in ("POD_CIDRS", "SERVICE_CIDRS")}
    nodes = _node_networks("NODE_NETWORKS", plan.values["NODE_NETWORKS"], tunnel)
    if bool(cidrs["POD_CIDRS"]) != bool(cidrs["SERVICE_CIDRS"]):
        empty = "POD_CIDRS" if not cidrs["POD_CIDRS"] else "SERVICE_CIDRS"
        raise SettingsError(
            empty, given[empty], "empty (a cluster on this machine has pods and services)"
        )
    if not cidrs["POD_CIDRS"] and not nodes:
        raise SettingsError(
            "POD_CIDRS",
            given["POD_CIDRS"],
            "empty, and no NODE_NETWORKS either: nothing to exempt (give ranges or a preset)",
        )
    pod_set = netaddr.IPSet(cidrs["POD_CIDRS"])
    for net in cidrs["SERVICE_CIDRS"]:
        if netaddr.IPSet([net]) & pod_set:
            raise SettingsError("SERVICE_CIDRS", str(net), "overlaps POD_CIDRS")
    cluster_set = netaddr.IPSet(cidrs["POD_CIDRS"] + cidrs["SERVICE_CIDRS"])
    for net, iface in nodes:
        if netaddr.IPSet([net]) & cluster_set:
            raise SettingsError(
                "NODE_NETWORKS", f"{net}@{iface}", "overlaps POD_CIDRS or SERVICE_CIDRS"
            )

    machine = (
        None
        if given["MACHINE_ADDRESSES"].lower() == AUTO
        else _addresses("MACHINE_ADDRESSES", given["MACHINE_ADDRESSES"])
    )
    if machine == ():
        raise SettingsError("MACHINE_ADDRESSES", given["MACHINE_ADDRESSES"], "empty (or 'auto')")
    public = _addresses("PUBLIC_ADDRESSES", given["PUBLIC_ADDRESSES"])

    host_text = given["HOST_PORTS"]
    if host_text.lower() == NONE:
        host_ports: tuple[PortRange, ...] = ()
    elif _words(host_text):
        host_ports = _port_ranges("HOST_PORTS", host_text)
    else:
        defaults = sorted({port for p in plan.presets for port in p.host_ports})
        host_ports = _port_ranges("HOST_PORTS", " ".join(map(str, defaults))) if defaults else ()

    return Settings(
        preset=plan.preset,
        pod_cidrs=cidrs["POD_CIDRS"],
        service_cidrs=cidrs["SERVICE_CIDRS"],
        node_networks=nodes,
        machine_addresses=machine,
        public_addresses=public,
        host_ports=host_ports,
        tunnel_interface=tunnel,
        cluster_interfaces=_interface_patterns(
            "CLUSTER_INTERFACES", given["CLUSTER_INTERFACES"], tunnel
        ),
        output=_output(given["OUTPUT"]),
        bridge_table=_bool("BRIDGE_TABLE", given["BRIDGE_TABLE"]),
        origins=plan.origins,
    )


def detects(raw_sources: Iterable[Mapping[str, str]]) -> bool:
    """Whether these settings read the machine (some value is auto), as `follow` asks."""
    raw = {f.key: f.default for f in SCHEMA}
    for source in raw_sources:
        raw.update(source)
    return any(raw.get(key, "").strip().lower() == AUTO for key in ("PRESET", *_AUTO_KINDS))


def check_ifname(key: str, value: str) -> str:
    return _single(key, value, IFNAME, "not an interface name (1-15 of A-Z a-z 0-9 _ . -)")


# Which detected kind fills which setting.
_AUTO_KINDS = {"POD_CIDRS": "pods", "SERVICE_CIDRS": "services", "NODE_NETWORKS": "nodes"}
_PRESET_FIELD = {"POD_CIDRS": "pod_cidrs", "SERVICE_CIDRS": "service_cidrs"}


class _Plan(NamedTuple):
    """The cluster ranges as text, after presets and detection, and where each came from."""

    preset: str
    presets: tuple[Preset, ...]  # whose defaults apply (several with PRESET=auto)
    values: dict[str, str]  # POD_CIDRS, SERVICE_CIDRS, NODE_NETWORKS
    origins: tuple[str, ...]


def _distribution(preset: str) -> str:
    """The distribution a preset is for (minikube-kvm2 -> minikube), as detect names it."""
    return PRESETS[preset].distribution or preset if preset in PRESETS else preset


def _plan(given: Mapping[str, str], detect: Callable[[], Detection] | None) -> _Plan:
    preset = given["PRESET"].lower()
    if preset not in (AUTO, CUSTOM_PRESET) and preset not in PRESETS:
        raise SettingsError(
            "PRESET",
            given["PRESET"],
            f"unknown preset (choose {', '.join(PRESET_CHOICES[:-1])} or {CUSTOM_PRESET})",
        )
    wanted = [k for k in _AUTO_KINDS if given[k].lower() == AUTO]
    found: list[Found] = []
    origins: list[str] = []
    if (wanted or preset == AUTO) and detect is not None:
        hits, errors = detect()
        if preset not in (AUTO, CUSTOM_PRESET):  # another distribution's files: not ours
            errors = [e for e in errors if e.distribution in ("", _distribution(preset))]
        # A source root does not trust is ignored (with what it would have said) and
        # said; it never stops what the other sources found.
        origins += [f"{IGNORED_SOURCE} {e}" for e in errors if not e.fatal]
        errors = [e for e in errors if e.fatal]
        if errors:
            # A broken file withholds what it would say: guessing could exempt the wrong
            # ranges, so nothing changes until it is fixed or the ranges are given.
            key = wanted[0] if wanted else "PRESET"
            raise SettingsError(key, AUTO, f"cannot read the cluster's ranges: {errors[0]}")
        found = list(hits)
    if preset == AUTO:
        names = list(dict.fromkeys(f.distribution for f in found))
        # minikube's presets are per driver; what was found says which one applies.
        chosen = [_auto_preset(name, found) for name in names] or [FALLBACK_PRESET]
        presets = tuple(PRESETS[n] for n in chosen)
        if names:
            origins.append(f"PRESET=auto: found {', '.join(chosen)}")
        else:
            origins.append(f"PRESET=auto: {NO_CLUSTER_FOUND}, {FALLBACK_PRESET}'s defaults")
    elif preset == CUSTOM_PRESET:
        presets = ()
    else:
        presets = (PRESETS[preset],)
        found = [f for f in found if f.distribution == _distribution(preset)]
    values: dict[str, str] = {}
    for key, kind in _AUTO_KINDS.items():
        text = given[key]
        hits = [f for f in found if f.kind == kind]
        if text.lower() == AUTO and hits:
            values[key] = " ".join(_found_word(f, presets) for f in hits)
            origins += [f"{key} {_found_word(f, presets)}: {f.source}" for f in hits]
            continue
        if text.lower() == NONE and key == "NODE_NETWORKS":
            values[key] = ""
            continue
        if text.lower() == AUTO or not _words(text):
            values[key] = " ".join(_preset_values(key, presets))
            if text.lower() == AUTO and values[key] and detect is not None:
                which = ", ".join(p.name for p in presets)
                origins.append(f"{key}: nothing detected, the preset's ({which})")
            continue
        values[key] = text
    return _Plan(preset, presets, values, tuple(origins))


def _auto_preset(distribution: str, found: Sequence[Found]) -> str:
    if distribution != "minikube":
        return distribution
    kinds = {(f.kind, f.interface or "") for f in found if f.distribution == "minikube"}
    if any(kind in ("pods", "services") for kind, _ in kinds):  # kubeadm on this machine
        return "minikube-none"
    if any(iface.startswith("virbr") for _, iface in kinds):
        return "minikube-kvm2"
    return "minikube"


def _preset_values(key: str, presets: Sequence[Preset]) -> list[str]:
    words: list[str] = []
    for p in presets:
        items = p.node_networks if key == "NODE_NETWORKS" else getattr(p, _PRESET_FIELD[key])
        words += [w for w in items if w not in words]
    return words


def _found_word(found: Found, presets: Sequence[Preset]) -> str:
    """A detected range as its setting's word; a node network on the bridge it was found
    on, or (where the engine did not say) on the preset's bridge pattern."""
    if found.kind != "nodes":
        return found.network
    if found.interface:
        return f"{found.network}@{found.interface}"
    own = PRESETS.get(_distribution(found.distribution))
    patterns = [w.split("@", 1)[1] for p in (own, *presets) if p for w in p.node_networks]
    return f"{found.network}@{patterns[0] if patterns else 'br-*'}"


def _node_networks(key: str, value: str, tunnel: str) -> tuple[NodeNetwork, ...]:
    out: set[NodeNetwork] = set()
    for word in _words(value):
        cidr, at, iface = word.partition("@")
        if not at or not cidr:
            raise SettingsError(
                key, word, "not CIDR@INTERFACE (e.g. 172.18.0.0/16@br-1a2b3c4d5e6f)"
            )
        (net,) = _cluster_cidrs(key, cidr) or (None,)
        if not _IFPATTERN.fullmatch(iface):
            raise SettingsError(
                key, word, "not an interface name or NAME* pattern (A-Z a-z 0-9 _ . -) after @"
            )
        if _matches(iface, tunnel):
            raise SettingsError(key, word, f"matches the tunnel interface {tunnel}")
        out.add((net, iface))
    return _without_covered(key, out)


def _without_covered(key: str, nodes: Iterable[NodeNetwork]) -> tuple[NodeNetwork, ...]:
    """Sorted, without entries another covers (a wider range on a bridge pattern that
    covers theirs): nft refuses overlapping elements of an interval set. Entries that
    overlap without one covering the other are refused: which one was meant?"""
    ordered = sorted(nodes, key=lambda n: (*_net_key(n[0]), n[1]))
    kept: list[NodeNetwork] = []
    for net, iface in ordered:
        if any(_covers(other, (net, iface)) for other in ordered if other != (net, iface)):
            continue
        kept.append((net, iface))
    for i, (net, iface) in enumerate(kept):
        for other, other_iface in kept[i + 1 :]:
            if (
                net.version == other.version
                and (_covers_if(iface, other_iface) or _covers_if(other_iface, iface))
                and (net in other or other in net)
            ):
                raise SettingsError(
                    key,
                    f"{other}@{other_iface}",
                    f"overlaps {net}@{iface} without either covering the other (give each "
                    "bridge its own range)",
                )
    return tuple(kept)


def _covers(a: NodeNetwork, b: NodeNetwork) -> bool:
    return a[0].version == b[0].version and b[0] in a[0] and _covers_if(a[1], b[1])


def _covers_if(pattern: str, other: str) -> bool:
    """Whether every name OTHER (a name or NAME* pattern) matches also matches PATTERN."""
    return _matches(pattern, other.rstrip("*")) and (pattern.endswith("*") or pattern == other)


def _matches(pattern: str, name: str) -> bool:
    return pattern == name or (pattern.endswith("*") and name.startswith(pattern[:-1]))


def _interface_patterns(key: str, value: str, tunnel: str) -> tuple[str, ...]:
    patterns = _words(value)
    if not patterns:
        raise SettingsError(key, value, "empty (cluster traffic needs at least its bridge)")
    for word in patterns:
        if not _IFPATTERN.fullmatch(word):
            raise SettingsError(
                key, word, "not an interface name or NAME* pattern (A-Z a-z 0-9 _ . -)"
            )
        if _matches(word, tunnel):
            raise SettingsError(key, word, f"matches the tunnel interface {tunnel}")
    return minimal_patterns(patterns)


def minimal_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """Sorted, without names another NAME* pattern covers (nft refuses overlapping ones)."""
    unique = set(patterns)
    prefixes = [p[:-1] for p in unique if p.endswith("*")]
    return tuple(
        sorted(
            p
            for p in unique
            if not any(p.rstrip("*").startswith(q) and p != q + "*" for q in prefixes)
        )
    )


def _output(value: str) -> str:
    if value == "-":
        return value
    _single("OUTPUT", value, _PATH, "must be an absolute path (or - for standard output)")
    if "/../" in value + "/" or value.endswith("/"):
        raise SettingsError("OUTPUT", value, "must name a file, without '..'")
    return value


def render_settings_file(settings: Settings | None = None) -> str:
    """The documented KEY=VALUE file (the packages ship it with the defaults)."""
    values = settings.as_strings() if settings else {f.key: f.default for f in SCHEMA}
    lines = [
        "# Settings for mullvad-allow-k8s. After editing run: mullvad-allow-k8s apply",
        "# (or: systemctl reload mullvad-allow-k8s). See mullvad-allow-k8s(8).",
    ]
    for field in SCHEMA:
        lines.append("")
        lines.extend(textwrap.wrap(field.help, 78, initial_indent="# ", subsequent_indent="# "))
        lines.append(f"{field.key}={shlex.quote(values[field.key])}")
    return "\n".join(lines) + "\n"
