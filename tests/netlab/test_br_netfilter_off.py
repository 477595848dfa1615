"""Without br_netfilter (bridge-nf-call-iptables=0) the pod rules still count pods only
on cluster interfaces, and spoofed pod sources from the LAN still get nothing.

The matrix runs with br_netfilter on, as Kubernetes needs it. Without it, frames bridged
between pods never reach nftables (pod -> pod works, unjudged by anyone), while routed
pod traffic (to the gateway: the node, the API ClusterIP whose endpoint is the node)
arrives on cni0 itself: the cluster interface test must hold for both ways in. The
expectations are the matrix's for connected, LAN sharing off, bypass loaded. Not here:
ClusterIPs with an endpoint pod on the same bridge, whose replies are bridged straight
back without br_netfilter and so never un-DNAT-ed (why Kubernetes requires it).
"""

from __future__ import annotations

from .mullvad_emu import MullvadState
from .probes import PROBE_BY_ID, Scenario, check
from .scenarios import load_bypass, run_probes
from .topology import Lab

NAMES = [
    "spoof_pod_v4", "spoof_svc_v4", "spoof_host_v4",
    "spoof_pod_v6", "spoof_svc_v6", "spoof_host_v6",
    "pod_api_svc_v4", "pod_pod_tcp_v4", "pod_node_ip_v4",
    "remote_nodeport_v4", "remote_hostport_v4", "remote_host_service_v4",
]  # fmt: skip
PROBES = [PROBE_BY_ID[name] for name in NAMES]


def test_without_br_netfilter_pods_work_and_spoofed_sources_get_nothing() -> None:
    state = MullvadState("connected", False, True)
    lab = Lab(state, br_nf=False)
    try:
        lab.build()
        assert lab["host"].read_sysctl("net.bridge.bridge-nf-call-iptables") == "0"
        load_bypass(lab, "generated")
        outcomes = run_probes(lab, PROBES)
        lab.barrier(hops=4)
        counters = lab.counters()
    finally:
        lab.destroy()
    scenario = Scenario(state, "generated")
    problems = [
        f"{p.id}: {problem}"
        for p in PROBES
        for problem in check(p, outcomes[p.id], counters, p.expect(scenario))
    ]
    assert not problems, "\n".join(problems)
