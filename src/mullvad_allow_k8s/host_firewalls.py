"""Host firewalls that keep HOST_PORTS and NodePorts closed however our table marks them.

Our table only marks; whether a connection from the LAN is then accepted on this
machine is also up to any other input filter: ufw (iptables-nft tables with `ufw-*`
chains), firewalld (`inet firewalld`), NixOS' firewall (`nixos-fw` chains) or a hand-
written nftables input chain with policy drop. `doctor` reads the whole ruleset (as
libnftables' JSON), finds the input base chains that drop what they do not accept, and
for each port range none of their tables accepts prints the command that opens it in
that firewall's own terms. It never opens anything itself.

What counts as opened: a rule with an `accept` verdict matching `tcp dport` on a value,
range or set that covers the whole range. A port opened for some sources only (ufw's
`allow from ...`) counts as open: doctor cannot know which clients are meant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

Ruleset = list[dict[str, Any]]
PortRange = tuple[int, int]

# kube-proxy's default --service-node-port-range.
NODE_PORTS: PortRange = (30000, 32767)


class Closed(NamedTuple):
    """A port range an input filter of this machine drops, and how to open it there."""

    firewall: str  # ufw | firewalld | nixos | nftables
    ports: PortRange
    what: str  # "HOST_PORTS" or "NodePorts"
    command: str


def _items(ruleset: Ruleset, kind: str) -> list[dict[str, Any]]:
    return [item[kind] for item in ruleset if kind in item]


def _kind_of(family: str, table: str, chains: Iterable[str]) -> str:
    names = list(chains)
    if any(c.startswith("ufw-") or c.startswith("ufw6-") for c in names):
        return "ufw"
    if table == "firewalld":
        return "firewalld"
    if table == "nixos-fw" or any(c.startswith("nixos-fw") for c in names):  # nft, iptables
        return "nixos"
    return "nftables"


def _ends_in_refusal(rules: list[dict[str, Any]]) -> bool:
    """An unconditional drop/reject at the end of a chain (firewalld's own style)."""
    if not rules:
        return False
    expr = rules[-1].get("expr", [])
    verdicts = [e for e in expr if "drop" in e or "reject" in e]
    conditions = [e for e in expr if "match" in e]
    return bool(verdicts) and not conditions


def _covers(right: Any, ports: PortRange) -> bool:
    low, high = ports
    if isinstance(right, int):
        return low == high == right
    if isinstance(right, dict) and "range" in right:
        a, b = right["range"]
        return isinstance(a, int) and isinstance(b, int) and a <= low and high <= b
    if isinstance(right, dict) and "set" in right:
        return any(_covers(element, ports) for element in right["set"])
    if isinstance(right, list):
        return any(_covers(element, ports) for element in right)
    return False


def _accepts(rule: dict[str, Any], ports: PortRange) -> bool:
    expr = rule.get("expr", [])
    if not any("accept" in e for e in expr):
        return False
    for e in expr:
        match = e.get("match", {})
        left = match.get("left", {})
        payload = left.get("payload", {}) if isinstance(left, dict) else {}
        tcp_dport = payload.get("protocol") == "tcp" and payload.get("field") == "dport"
        equal = match.get("op", "==") in ("==", "in")
        if tcp_dport and equal and _covers(match.get("right"), ports):
            return True
    return False


_DPORT = re.compile(r"\btcp dport (\{[^}]*\}|[0-9]+(?:-[0-9]+)?)")


def accepted_in_text(text: str, ports: PortRange) -> bool:
    """The same question asked of a table's text listing: iptables-nft (ufw) writes port
    ranges as xt `multiport` matches, which libnftables' JSON leaves opaque but its text
    form translates (`tcp dport 30000-32767 ... accept`)."""
    for line in text.splitlines():
        if not line.rstrip().endswith("accept"):
            continue
        for found in _DPORT.finditer(line):
            values = []
            for word in found.group(1).strip("{} ").split(","):
                low, _, high = word.strip().partition("-")
                if low.isdigit() and (not high or high.isdigit()):
                    values.append({"range": [int(low), int(high or low)]})
            if _covers({"set": values}, ports):
                return True
    return False


def _command(kind: str, family: str, table: str, chain: str, ports: PortRange) -> str:
    low, high = ports
    span = str(low) if low == high else f"{low}-{high}"
    if kind == "ufw":
        ufw = str(low) if low == high else f"{low}:{high}"
        return f"sudo ufw allow {ufw}/tcp"
    if kind == "firewalld":
        return f"sudo firewall-cmd --permanent --add-port={span}/tcp && sudo firewall-cmd --reload"
    if kind == "nixos":
        option = (
            f"networking.firewall.allowedTCPPorts = [ {low} ];"
            if low == high
            else f"networking.firewall.allowedTCPPortRanges = [ {{ from = {low}; to = {high}; }} ];"
        )
        return f"{option} (or services.mullvadAllowK8s.openFirewall = true;)"
    return (
        f"sudo nft insert rule {family} {table} {chain} tcp dport {span} accept "
        "(and the same in the file your nftables.service loads)"
    )


def closed_ports(
    ruleset: Ruleset,
    wanted: Iterable[tuple[str, PortRange]],
    ours: Iterable[str],
    text_of: Callable[[str, str], str] = lambda family, table: "",
) -> list[Closed]:
    """The (what, ports) of `wanted` that an input filter drops; `ours`: table names to
    leave out (Mullvad's and this tool's: Mullvad's drops are what the marks answer);
    `text_of(family, table)`: a table's text listing, asked where JSON cannot tell."""
    skip = set(ours)
    chains = _items(ruleset, "chain")
    rules = _items(ruleset, "rule")
    out: list[Closed] = []
    for chain in chains:
        if chain.get("hook") != "input" or chain.get("table") in skip:
            continue
        family, table, name = chain["family"], chain["table"], chain["name"]
        in_table = [r for r in rules if r["family"] == family and r["table"] == table]
        own = [r for r in in_table if r["chain"] == name]
        if chain.get("policy") != "drop" and not _ends_in_refusal(own):
            continue
        names = [c["name"] for c in chains if c["family"] == family and c["table"] == table]
        kind = _kind_of(family, table, names)
        opaque = any("xt" in e for r in in_table for e in r.get("expr", []))
        text = text_of(family, table) if opaque else ""
        for what, ports in wanted:
            if any(_accepts(r, ports) for r in in_table) or accepted_in_text(text, ports):
                continue
            closed = Closed(kind, ports, what, _command(kind, family, table, name, ports))
            if closed not in out:
                out.append(closed)
    return out


def describe(closed: Closed) -> str:
    low, high = closed.ports
    span = str(low) if low == high else f"{low}-{high}"
    return (
        f"{closed.firewall}'s input filter drops TCP {span} ({closed.what}): clients off this "
        "machine cannot reach them, however our table marks them"
    )


def parse(text: str) -> Ruleset:
    """`nft -j list ruleset` output as its list of items."""
    data = json.loads(text or "{}")
    items = data.get("nftables", []) if isinstance(data, dict) else []
    return [i for i in items if isinstance(i, dict)]
