"""The Mullvad emulation is faithful to notes §1-2: chains, priorities, policies, order.

If these fail, the lab no longer stands for the app and the matrix proves nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from . import mullvad_emu
from .mullvad_emu import MullvadState
from .nsutil import Netns, create_namespaces, delete_namespaces
from .topology import PREFIX, TUNNEL, Lab

CHAINS = {  # name: (type, hook, priority as nft prints it, policy)  -- notes §1.1
    "prerouting": ("filter", "prerouting", "-199", "accept"),
    "output": ("filter", "output", "filter", "drop"),
    "input": ("filter", "input", "filter", "drop"),
    "forward": ("filter", "forward", "filter", "drop"),
    "mangle": ("route", "output", "mangle", "accept"),
    "nat": ("nat", "postrouting", "srcnat", "accept"),
}
CT_ACCEPT = "ct mark 0x00000f41 accept"


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    """One namespace with a `wg0-mullvad` to load the emulated table into."""
    (ns,) = create_namespaces([f"{PREFIX}{os.getpid()}-emu"])
    try:
        ns.ip("link add wg0-mullvad type veth peer name tun0\n")
        yield ns
    finally:
        delete_namespaces([ns])


def listed(ns: Netns, st: MullvadState) -> dict[str, tuple[str, list[str]]]:
    """Load the emulation for `st`; chain name -> (header line, rules) as nft lists them."""
    ns.nft(mullvad_emu.ruleset(st, TUNNEL))
    text = ns.exec("nft", "list", "table", "inet", "mullvad").stdout
    chains: dict[str, tuple[str, list[str]]] = {}
    for m in re.finditer(r"chain (\w+) \{\n(.*?)\n\t\}", text, re.S):
        lines = [line.strip() for line in m.group(2).splitlines() if line.strip()]
        chains[m.group(1)] = (lines[0], lines[1:])
    return chains


STATES = [
    MullvadState(state, lan, split)
    for state in ("connected", "blocked")
    for lan in (False, True)
    for split in (True, False)
]


@pytest.mark.parametrize("st", STATES, ids=lambda s: s.label)
def test_chains_hooks_priorities_policies(netns: Netns, st: MullvadState) -> None:
    chains = listed(netns, st)
    assert set(chains) == set(CHAINS)
    for name, (kind, hook, prio, policy) in CHAINS.items():
        assert chains[name][0] == f"type {kind} hook {hook} priority {prio}; policy {policy};"


@pytest.mark.parametrize("st", STATES, ids=lambda s: s.label)
def test_rule_order(netns: Netns, st: MullvadState) -> None:
    """Order that decides what Kubernetes traffic sees (notes §1.5)."""
    c = {name: rules for name, (_, rules) in listed(netns, st).items()}
    out, inp, fwd = c["output"], c["input"], c["forward"]
    assert out[0] == 'oif "lo" accept' and inp[0] == 'iif "lo" accept'
    assert out[-1] == fwd[-1] == "reject"
    if st.split:
        assert fwd[0] == CT_ACCEPT and out[1] == CT_ACCEPT and inp[1] == CT_ACCEPT
        assert 'oif != "lo" ct mark 0x00000f41 masquerade' in c["nat"]
        assert any("meta cgroup 5087041" in r for r in c["mangle"])
    else:
        assert not any("0x00000f41" in r for rules in c.values() for r in rules)
        assert c["nat"] == [] and c["mangle"] == []
    for chain in (out, fwd):
        dns_reject = chain.index("udp dport 53 reject")
        assert chain[dns_reject + 1] == "tcp dport 53 reject with tcp reset"
        lan = [i for i, r in enumerate(chain) if r.startswith("ip daddr 10.0.0.0/8")]
        assert bool(lan) == st.allow_lan
        assert all(i > dns_reject for i in lan)
    if st.state == "connected":
        tunnel_dns = fwd.index('oif "wg0-mullvad" udp dport 53 ip daddr 10.64.0.1 accept')
        assert tunnel_dns < fwd.index("udp dport 53 reject") < fwd.index('oif "wg0-mullvad" accept')
        assert fwd.index('iif "wg0-mullvad" ct state established accept') > tunnel_dns
        cve = [i for i, r in enumerate(inp) if r.endswith(" drop")]
        assert bool(cve) == st.allow_lan
        if st.allow_lan:
            assert inp.index('iif "wg0-mullvad" accept') < min(cve)
            assert max(cve) < inp.index("ip saddr 10.0.0.0/8 accept")
        assert any("meta mark set 0x6d6f6c65" in r for r in c["prerouting"])
    else:
        assert c["prerouting"] == []
        assert not any("wg0-mullvad" in r for rules in c.values() for r in rules)
    assert not any("established,related" in r for rules in c.values() for r in rules)


def test_policy_routing_connected_then_blocked() -> None:
    """Rules land at 32764/32765 like the app's; leaving Connected removes them and
    the tunnel, and the table is swapped for the blocked one."""
    lab = Lab(MullvadState("connected", False, True))
    try:
        lab.build()
        host = lab["host"]
        for fam in ("-4", "-6"):
            rules = host.exec("ip", fam, "rule").stdout
            assert "32764:\tfrom all lookup main suppress_prefixlength 0" in rules
            assert "32765:\tnot from all fwmark 0x6d6f6c65 lookup 1836018789" in rules
            route = host.exec("ip", fam, "route", "show", "table", "1836018789").stdout
            assert route.startswith("default dev wg0-mullvad")
        assert host.read_sysctl("net.ipv4.conf.all.src_valid_mark") == "1"
        assert host.read_sysctl("net.ipv4.conf.all.arp_ignore") == "2"
        lab.set_mullvad(MullvadState("blocked", False, True))
        for fam in ("-4", "-6"):
            assert "1836018789" not in host.exec("ip", fam, "rule").stdout
        assert host.exec("ip", "link", "show", "wg0-mullvad", check=False).returncode != 0
        prerouting = host.exec("nft", "list", "chain", "inet", "mullvad", "prerouting").stdout
        assert "meta mark" not in prerouting
    finally:
        assert lab.destroy() == []
