"""Documents the seed ruleset's behaviour on this kernel (no nf_conntrack_bridge).

The seed (eat-correctly/mullvad-allow-k8s `k8s_bypass_mullvad.nft`, notes §4) puts
ct-mark rules in a `bridge` table. Without CONFIG_NF_CONNTRACK_BRIDGE the kernel
rejects every bridge-family `ct` expression with EPROTO, and since `nft -f` is one
transaction, nothing of the file loads: not even its inet table. The file below is a
reconstruction from the notes' description (same tables, hooks, priorities and rule
shapes), written here rather than fetched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from . import mullvad_emu
from .mullvad_emu import MullvadState
from .nsutil import Netns, create_namespaces, delete_namespaces
from .topology import PREFIX, TUNNEL

SEED_EQUIVALENT = """\
define MACHINE_ADDR = { 192.168.1.100, 198.51.100.135 }
define K8S_ADDR = { 10.96.0.0/12, 10.244.0.0/24 }
define NE_PORTS = { 1-32767, 61000-65535 }
define CT = 0x00000f41
define FW = 0x6d6f6c65

table inet bypass-mullvad
delete table inet bypass-mullvad
table bridge k8s-bypass-mullvad
delete table bridge k8s-bypass-mullvad

table inet bypass-mullvad {
\tchain prerouting {
\t\ttype filter hook prerouting priority -10; policy accept;
\t\tip daddr $MACHINE_ADDR tcp dport $NE_PORTS meta mark set $FW accept
\t\tip saddr $MACHINE_ADDR tcp sport $NE_PORTS meta mark set $FW accept
\t}
\tchain input {
\t\ttype filter hook input priority -10; policy accept;
\t\tip daddr $MACHINE_ADDR tcp dport $NE_PORTS ct mark set $CT accept
\t\tip saddr $MACHINE_ADDR tcp sport $NE_PORTS ct mark set $CT accept
\t}
\tchain output {
\t\ttype route hook output priority -10; policy accept;
\t\tip saddr $MACHINE_ADDR tcp sport $NE_PORTS meta mark set $FW accept
\t\tip daddr $MACHINE_ADDR tcp dport $NE_PORTS meta mark set $FW accept
\t}
}

table bridge k8s-bypass-mullvad {
\tchain prerouting {
\t\ttype filter hook prerouting priority -10; policy accept;
\t\tip daddr $K8S_ADDR ct mark set $CT meta mark set $FW accept
\t\tip daddr $K8S_ADDR ip saddr $K8S_ADDR ct mark set $CT meta mark set $FW accept
\t}
\tchain input {
\t\ttype filter hook input priority -10; policy accept;
\t\tip daddr $MACHINE_ADDR tcp dport $NE_PORTS ct mark set $CT meta mark set $FW accept
\t\tip saddr $MACHINE_ADDR tcp sport $NE_PORTS ct mark set $CT meta mark set $FW accept
\t}
\tchain output {
\t\ttype filter hook output priority -10; policy accept;
\t\tip saddr $MACHINE_ADDR tcp sport $NE_PORTS meta mark set $FW accept
\t\tip daddr $MACHINE_ADDR tcp dport $NE_PORTS meta mark set $FW accept
\t}
}
"""

BRIDGE_CT_PROBE = """\
table bridge netlab_probe {
\tchain c {
\t\ttype filter hook prerouting priority 0; policy accept;
\t\tct mark set 0x1
\t}
}
"""


@pytest.fixture
def machine() -> Iterator[Netns]:
    """A namespace with Mullvad's connected table loaded (allow LAN on)."""
    (ns,) = create_namespaces([f"{PREFIX}{os.getpid()}-seed"])
    try:
        ns.ip("link add wg0-mullvad type veth peer name tun0\n")
        ns.nft(mullvad_emu.ruleset(MullvadState("connected", True, True), TUNNEL))
        yield ns
    finally:
        delete_namespaces([ns])


def tables(ns: Netns) -> set[str]:
    return set(ns.exec("nft", "list", "tables").stdout.splitlines())


def test_seed_file_loads_only_with_bridge_conntrack(machine: Netns) -> None:
    mullvad_before = machine.exec("nft", "list", "table", "inet", "mullvad").stdout
    probe = machine.nft(BRIDGE_CT_PROBE, check=False)
    if probe.returncode == 0:  # a kernel with nf_conntrack_bridge: the seed loads
        machine.exec("nft", "delete", "table", "bridge", "netlab_probe")
        assert machine.nft(SEED_EQUIVALENT, check=False).returncode == 0
        assert {"table inet bypass-mullvad", "table bridge k8s-bypass-mullvad"} <= tables(machine)
        return
    assert "Protocol error" in probe.stderr
    seed = machine.nft(SEED_EQUIVALENT, check=False)
    assert seed.returncode != 0
    assert seed.stderr.count("Could not process rule: Protocol error") >= 4, seed.stderr
    # One transaction: not even the inet table made it, and Mullvad's is untouched.
    assert tables(machine) == {"table inet mullvad"}
    assert machine.exec("nft", "list", "table", "inet", "mullvad").stdout == mullvad_before
