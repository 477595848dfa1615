"""The tunnel's own address inside a cluster range stays under Mullvad's rules.

The realistic case: Mullvad gives the tunnel an address in 10.64.0.0/10 (the gateway
is 10.64.0.1), and kubeadm's service range 10.96.0.0/12 lies inside it, so the tunnel
may well be 10.99.x.y or, here, 10.96.200.2. `apply` adds the tunnel's current
addresses to the protected set, which every exemption checks first. Without that, a
pod's connection to the tunnel address would carry the ct mark, which Mullvad's input
chain accepts before its CVE-2019-14899 drop (with LAN sharing) or its policy drop: the
control loads the same generated ruleset without the tunnel element and without
input_guard's per-packet test of it, and shows the pod getting through. The same for
the host's own connection to that address when a Service
has it as its ClusterIP (kube-proxy's output DNAT sends it to a pod, here one DNAT rule
of that shape): without the protection its reply from the pod, addressed to the tunnel
address, would pass Mullvad's input chain on the ct mark. The host's and the pods'
internet traffic, whose source is then a "cluster" address, still leaves only through
the tunnel.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from . import mullvad_emu
from .mullvad_emu import MullvadState
from .probes import PROBE_BY_ID, Outcome, Scenario, check, tcp_connect
from .scenarios import run_generator
from .topology import API_PORT, TUNNEL, V4, WEB_PORT, Lab

TUNNEL_IP = "10.96.200.2"  # inside SERVICE_CIDRS 10.96.0.0/12, like 10.99.x.y would be
MOVED = dataclasses.replace(TUNNEL, ips=(TUNNEL_IP, TUNNEL.ips[1]))
INTERNET = [PROBE_BY_ID["host_inet_v4"], PROBE_BY_ID["pod_inet_v4"]]
# input_guard's per-packet test of the tunnel's address (test_tunnel_address.py), which
# the control leaves out along with the element `apply` adds.
POOL_RULE = "fib daddr . iif type != local ct mark set 0x00000000"


# A Service whose ClusterIP is the tunnel's address, DNAT-ed by kube-proxy in output.
SERVICE_AT_TUNNEL = f"""table ip svc_at_tunnel {{
	chain output {{
		type nat hook output priority -100; policy accept;
		ip daddr {TUNNEL_IP} tcp dport {API_PORT} dnat to {V4.web_pod}:{WEB_PORT}
	}}
}}
"""


def outcome(result: Outcome) -> str:
    return result.detail if result.ok else "blocked"


def run(lan: bool, protected: bool) -> tuple[str, str, dict[str, list[str]], str]:
    """(pod -> tunnel address outcome, host -> that address as a ClusterIP outcome,
    internet probe problems, doctor output)."""
    state = MullvadState("connected", lan, True)
    lab = Lab(state)
    try:
        lab.build()
        # The new address first: removing a device's last IPv4 address would flush its
        # routes (the tunnel table's default route among them).
        lab["host"].ip(
            f"addr add {TUNNEL_IP}/32 dev {mullvad_emu.TUNNEL}\n"
            f"addr del {V4.tun_host}/32 dev {mullvad_emu.TUNNEL}\n"
        )
        lab["vpn"].ip(f"route add {TUNNEL_IP} dev tun0\n")
        lab["host"].nft(mullvad_emu.ruleset(state, MOVED))
        if protected:
            run_generator(lab, "apply")
        else:  # the control: the tunnel's address not added, nor checked per packet
            text = run_generator(lab, "generate").stdout
            lab["host"].nft("\n".join(x for x in text.split("\n") if POOL_RULE not in x))
        pod = lab["client"].call(lambda: tcp_connect(TUNNEL_IP, API_PORT))
        lab["host"].nft(SERVICE_AT_TUNNEL)
        host = lab["host"].call(lambda: tcp_connect(TUNNEL_IP, API_PORT))
        lab["host"].nft("delete table ip svc_at_tunnel\n")
        outcomes = {p.id: p.run(lab) for p in INTERNET}
        time.sleep(0.05)
        counters = lab.counters()
        scenario = Scenario(state, "generated")
        problems = {p.id: check(p, outcomes[p.id], counters, p.expect(scenario)) for p in INTERNET}
        doctor = run_generator(lab, "doctor", check=False).stdout
        return outcome(pod), outcome(host), problems, doctor
    finally:
        lab.destroy()


@pytest.mark.parametrize("lan", [False, True], ids=["lan_off", "lan_on"])
def test_tunnel_address_in_a_cluster_range_is_protected(lan: bool) -> None:
    pod, host, problems, doctor = run(lan, protected=True)
    assert pod == "blocked"
    assert host == "blocked"
    assert problems == {p.id: [] for p in INTERNET}
    assert f"the tunnel address {TUNNEL_IP} lies inside the cluster ranges" in doctor


def test_without_the_tunnel_element_a_pod_reaches_the_tunnel_address() -> None:
    """The control: the lab sees what the protection prevents."""
    pod, host, _, _ = run(lan=True, protected=False)
    assert pod.startswith("banner 'host "), pod
    assert host.startswith("banner 'web "), host
