"""Rootless container engines need nothing from our table (issue 23, item 4).

Rootless Podman and Docker (and kind, k3d and minikube on them) keep their containers in
a user's network namespace that has no link to this machine's: slirp4netns (Podman 4's
default, rootless Docker's default; Podman 5 uses pasta the same way) carries their
traffic as ordinary sockets of this machine, and publishes ports by listening on this
machine's addresses. So every packet the host's firewall sees is this machine's own:
the nodes' traffic to the internet goes through the tunnel, their DNS goes to whatever
this machine's resolv.conf names (Mullvad's resolver), their DNS to anything else is
Mullvad's to reject, and a published port is a host service like any other (kubectl's
127.0.0.1 works; a LAN client needs LAN sharing, or the port in HOST_PORTS).
Node-to-node and pod-to-pod traffic of a multi-node rootless cluster never reaches this
machine's network namespace at all.

The lab's machine gets such a namespace: an unprivileged user's (uid 4242) user and
network namespace, wired by the real slirp4netns with its defaults as Podman uses them
(--configure, --disable-host-loopback, MTU 65520), a node's API server listening in it on
NODE_PORT and published by slirp4netns' own port forwarder on this machine's 0.0.0.0, as
`podman run -p` does rootless. slirp4netns runs as root here (this machine's
/dev/net/tun is 0600; Debian's udev makes it 0666 for users): its sockets are the same,
and Mullvad's rules do not look at a socket's owner. Its resolv.conf names Mullvad's
in-tunnel resolver, as the app sets it when connected.

Each probe in each cell, all in one lab: Mullvad alone (LAN sharing off, then on), our
table (and with NODE_PORT added to HOST_PORTS, the documented way to open a published
port to the LAN), and the naive leaky table of scenarios.py as the control that shows the
probes can see a leak.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .mullvad_emu import MullvadState
from .nsutil import LabError, Netns, run, wait_ready
from .probes import Outcome, dns_query, tcp_connect
from .scenarios import load_bypass, naive_ruleset, run_generator
from .topology import API_PORT, INET_HOST, LAN_SERVICE_PORT, V4, V6, Lab, counter_rules

NODE_PORT = 7443  # kind publishes its API on a random port of 127.0.0.1; a fixed one here
UID = 4242
SLIRP = {4: "10.0.2.100", 6: "fd00::100"}  # the node's addresses (slirp4netns' defaults)
SLIRP_DNS = {4: "10.0.2.3", 6: "fd00::3"}  # its DNS forwarder
WATCH = {
    "inet": "{ip} daddr {internet} tcp dport " + str(INET_HOST),
    "outside_dns": "{ip} daddr {outside_dns_host} udp dport 53",
}


def _rootless(lab: Lab) -> Netns:
    """The user's namespace, its slirp4netns and its node; kept in the lab's namespaces
    and processes so that `destroy` removes them."""
    holder = lab["host"].spawn(
        [
            *("setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"),
            *("unshare", "--user", "--map-root-user", "--net", "sleep", "infinity"),
        ]
    )
    comm = Path(f"/proc/{holder.pid}/comm")
    _wait(lambda: comm.read_text().strip() == "sleep")  # exec-ed after unshare made its ns
    name = f"{lab.uid}-rootless"
    run(
        ["ip", "netns", "attach", name, str(holder.pid)]
    )  # not inside `ip netns exec`: its mounts stay there
    node = lab.ns["rootless"] = Netns(name)
    resolv = lab.tmp / "resolv.conf"
    resolv.write_text(f"nameserver {V4.tun_gw}\n")
    api = lab.tmp / "slirp.sock"
    lab["host"].spawn(
        [
            "sh",
            "-c",  # `ip netns exec` gave it a mount namespace of its own
            f"mount --bind {resolv} /etc/resolv.conf && exec slirp4netns --configure "
            "--mtu=65520 --disable-host-loopback --enable-ipv6 "
            f"--api-socket {api} {holder.pid} tap0",
        ]
    )
    _wait(lambda: api.exists() and SLIRP[4] in node.exec("ip", "-4", "addr").stdout)
    # IPv6 by slirp4netns' router advertisements (SLAAC in fd00::/64)
    _wait(lambda: "default" in node.exec("ip", "-6", "route").stdout)
    wait_ready([node.spawn_agent(json.dumps({"ident": "node", "tcp": [["0.0.0.0", NODE_PORT]]}))])
    with socket.socket(socket.AF_UNIX) as sock:  # what `podman run -p NODE_PORT` asks
        sock.connect(str(api))
        args = {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": NODE_PORT}
        args |= {"guest_addr": SLIRP[4], "guest_port": NODE_PORT}
        sock.sendall(json.dumps({"execute": "add_hostfwd", "arguments": args}).encode())
        reply = sock.recv(4096).decode()
    if "error" in reply:
        raise LabError(f"slirp4netns add_hostfwd: {reply}")
    return node


def _wait(ready: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise LabError(f"not ready after {timeout} s: {ready}")
        time.sleep(0.02)


def _probes(lab: Lab) -> dict[str, Outcome]:
    """Every probe at once (a blocked one costs the client timeout, 1 s)."""
    node, host, lanclient = lab["rootless"], lab["host"], lab["lanclient"]
    runs: dict[str, tuple[Netns, Callable[[], Outcome]]] = {
        # kubectl to the API server published on this machine
        "kubectl": (host, lambda: tcp_connect("127.0.0.1", NODE_PORT)),
        # a node pulls an image
        "node_internet": (node, lambda: tcp_connect(V4.internet, INET_HOST)),
        "node_internet_v6": (node, lambda: tcp_connect(V6.internet, INET_HOST)),
        # a node's resolver: slirp4netns' forwarder, which asks this machine's
        "node_dns": (node, lambda: dns_query(SLIRP_DNS[4], 53, "udp")),
        # a node asks an outside resolver itself
        "node_outside_dns": (node, lambda: dns_query(V4.outside_dns_host, 53, "udp")),
        "node_outside_dns_v6": (node, lambda: dns_query(V6.outside_dns_host, 53, "udp")),
        # a node reaches a LAN host (a NAS)
        "node_lan": (node, lambda: tcp_connect(V4.lan_client, LAN_SERVICE_PORT)),
        # a LAN client reaches the published port
        "lan_published": (lanclient, lambda: tcp_connect(V4.host_lan, NODE_PORT)),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(ns.call, fn) for name, (ns, fn) in runs.items()}
        return {name: fut.result() for name, fut in futures.items()}


def _counts(lab: Lab) -> dict[str, tuple[int, int]]:
    """watch -> (packets on the LAN link, in the tunnel) since the last reset."""

    def read(role: str) -> dict[str, int]:
        data = lab[role].exec("nft", "-j", "list", "counters", "table", "inet", "netlab_rl")
        return {
            c["counter"]["name"]: int(c["counter"]["packets"])
            for c in json.loads(data.stdout)["nftables"]
            if "counter" in c
        }

    lan, tunnel = read("lan"), read("vpn")
    for role in ("lan", "vpn"):
        lab[role].exec("nft", "reset", "counters", "table", "inet", "netlab_rl")
    return {name: (lan[name], tunnel[name]) for name in lan}


# cell -> probe -> (connects/answers, by whom or None); watch -> (LAN link, tunnel) > 0
SAME = {
    "kubectl": (True, "node"),
    "node_internet": (True, "vpn"),
    "node_internet_v6": (True, "vpn"),
    "node_dns": (True, "tunnel"),
    "node_outside_dns": (False, None),
    "node_outside_dns_v6": (False, None),
    "node_lan": (False, None),
    "lan_published": (False, None),
}
PATHS = {  # the internet through the tunnel only; outside resolvers nowhere
    f"{watch}_v{v}": (False, watch == "inet") for watch in WATCH for v in (4, 6)
}
CELLS: dict[str, tuple[dict[str, tuple[bool, str | None]], dict[str, tuple[bool, bool]]]] = {
    "mullvad_alone-lan_off": (SAME, PATHS),
    "ours": (SAME, PATHS),
    "ours-published_port_in_host_ports": (SAME | {"lan_published": (True, "node")}, PATHS),
    # the control: the naive table exempts all DNS this machine sends (so it leaves by
    # the LAN, Mullvad's in-tunnel resolver included: no answer), and every new inbound
    # connection to a local address
    "naive": (
        SAME
        | {
            "node_dns": (False, None),
            "node_outside_dns": (True, "outside-lan"),
            "node_outside_dns_v6": (True, "outside-lan"),
            "lan_published": (True, "node"),
        },
        PATHS | {"outside_dns_v4": (True, False), "outside_dns_v6": (True, False)},
    ),
    "mullvad_alone-lan_on": (
        SAME | {"node_lan": (True, "lanclient"), "lan_published": (True, "node")},
        PATHS,
    ),
}


def _switch(lab: Lab, cell: str) -> None:
    """Put the lab into `cell` (the cells run in CELLS' order)."""
    if cell == "ours":
        load_bypass(lab, "generated")
    elif cell == "ours-published_port_in_host_ports":
        run_generator(lab, "apply", HOST_PORTS=f"{API_PORT} {NODE_PORT}")
    elif cell == "naive":
        run_generator(lab, "remove")
        lab["host"].nft(naive_ruleset())
    elif cell == "mullvad_alone-lan_on":
        lab["host"].exec("nft", "delete", "table", "inet", "netlab_naive")
        lab.set_mullvad(MullvadState("connected", True, True))


@pytest.fixture(scope="module")
def seen() -> dict[str, tuple[dict[str, Outcome], dict[str, tuple[int, int]]]]:
    lab = Lab(MullvadState("connected", False, True))
    try:
        lab.build()
        _rootless(lab)
        lab["lan"].nft(counter_rules("lanbr", WATCH, table="netlab_rl"))
        lab["vpn"].nft(counter_rules("tun0", WATCH, table="netlab_rl"))
        out = {}
        for cell in CELLS:
            _switch(lab, cell)
            out[cell] = (_probes(lab), _counts(lab))
        return out
    finally:
        lab.destroy()


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_rootless_engines_traffic_is_this_machines_own(
    seen: dict[str, tuple[dict[str, Outcome], dict[str, tuple[int, int]]]], cell: str
) -> None:
    outcomes, counts = seen[cell]
    want_probes, want_paths = CELLS[cell]
    got_probes = {name: (o.ok, o.ident if o.ok else None) for name, o in outcomes.items()}
    got_paths = {watch: (lan > 0, tunnel > 0) for watch, (lan, tunnel) in counts.items()}
    assert (got_probes, got_paths) == (want_probes, want_paths), (outcomes, counts)
