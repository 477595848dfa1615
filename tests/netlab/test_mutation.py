"""The mutation check (bench/mutation.py, issue 22 item 2) in `make test`.

Every rule of the table generated for the lab's settings is deleted in turn, and the
matches issue 22 lists are weakened; each mutant is loaded into the lab in place of
our table and the traffic probes run against it (see the script). The whole sweep
takes about 2 minutes (2 labs at once), so CI runs all of it, not a subset.

Mutants the probes leave alive but a netlab test with a lab of its own kills are
listed in KILLED_BY_TESTS with that test (the cheapest one): the script loads each into
just its tests (--killers), which must pass with our table and fail with the mutant.

The script exits 1 while any mutant survives. Today 3 do, each listed with the reason
no traffic can decide it (SURVIVORS_WITH_REASON). This test fails when the lists are
wrong in either direction: a mutant that survives and is in neither list (a rule that
lost its test, or a new rule without one: give it a probe or a killing test, or a
reason), a listed survivor that is now killed, or a KILLED_BY_TESTS entry the probes
now kill (remove it: it costs CI time). A weakening that no longer matches the generated table, a killer test
that fails with our table or does not run, or a probe that does not show what
test_matrix expects with the unmutated table, fails it too.
"""

# ruff: noqa: E501 (the lists' keys: the rules as they are, one a line)

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "mutation.py"

# --- issue 22, forward/output side -----------------------------------------------------
# Mutants the probes leave alive that netlab tests building labs of their own kill:
# bench/mutation.py --killers loads each into just its tests (pytest node ids; the
# cheapest that kills it), which must pass with our table and fail with the mutant.
_RULES = "tests/netlab/test_rules_per_packet.py::test_rules_per_packet_within_baseline"
_INJECT = (
    "tests/netlab/test_flow_injection.py::test_lan_host_cannot_inject_into_an_exempted_pod_flow"
)
KILLED_BY_TESTS: dict[str, list[str]] = {
    # forward_guard_new's first rule lets the common flow (still to the cluster, by a
    # cluster interface) go at once; the rules after it would decide the same, so its
    # deletion shows in cost only: 2 more rules per pod flow's first packet in forward.
    "delete forward_guard_new_v4[1]: ip daddr @cluster_v4 oifname @cluster_interfaces return": [
        _RULES
    ],
    "delete forward_guard_new_v6[1]: ip6 daddr @cluster_v6 oifname @cluster_interfaces return": [
        _RULES
    ],
    # An unserved connection from outside keeping its tentative ct mark: nothing of
    # Mullvad's or ours accepts that mark, so no packet gets further; each of its later
    # packets goes through `confirm_candidate` again (an established sshd connection
    # from the LAN: 3 -> 9 rules in prerouting).
    "delete confirm_candidate[6]: ct mark set 0x00000000": [_RULES],
    # The drops of forged packets of a flow the cluster started (a LAN host injecting).
    "delete forward_guard[2]: ct mark 0x00000f41 ct label 127 iifname != @cluster_interfaces drop": [
        f"{_INJECT}[connected-lan_off-rp_filter0-generated]"
    ],
    "delete input_guard[2]: ct mark 0x00000f41 ct label 127 iifname != @cluster_interfaces drop": [
        f"{_INJECT}[connected-lan_off-rp_filter0-generated-no_br_nf]"
    ],
    # Reached only when the tunnel's address lies in a cluster range (apply protects it).
    "delete output_new_v4[3]: ct original ip daddr @protected_v4 return": [
        "tests/netlab/test_tunnel_in_cluster.py::test_tunnel_address_in_a_cluster_range_is_protected[lan_off]"
    ],
}
# Mutants no traffic test kills, each with the reason; the test fails when one is killed
# (then it moves to the probes or KILLED_BY_TESTS) or a survivor is in no list.
SURVIVORS_WITH_REASON: dict[str, str] = {
    "delete output_new_v6[3]: ct original ip6 daddr @protected_v6 return": (
        "no packet reaches it: its flows' original destination is in cluster_v6 (the "
        "rules before it), which settings keep apart from protected_v6 (Mullvad's "
        "fc00:bbbb:bbbb:bb01::/64, where the tunnel's IPv6 addresses lie too)"
    ),
    "delete output_new_v6[2]: ct original ip6 daddr != @cluster_v6 return": (
        "its only effect: this machine's connections to its own addresses' NodePorts "
        "and LoadBalancer IPs, DNAT-ed into the cluster, are not exempted (they fail with "
        "LAN sharing off, as with Mullvad alone; deleted, they work). No security "
        "property depends on it in IPv6 (the tunnel's addresses are protected by rule "
        "3); in IPv4 it keeps the tunnel address's NodePort closed (host_tunnel_nodeport)"
    ),
    'weaken: cluster_interfaces without "lo"': (
        'Mullvad accepts loopback both ways (`oif/iif "lo" accept`) and never '
        'masquerades it (`oif != "lo"`), so whether this machine\'s flows over lo (to a '
        "local ClusterIP, node-local DNS, 127.0.0.1:HOST_PORTS) carry our ct mark changes "
        "nothing a packet meets; kube-proxy's IPVS mode sends a local client's packets "
        "on through LOCAL_OUT again with the pod's interface (linux "
        "net/netfilter/ipvs/ip_vs_xmit.c, ip_vs_nat_send_or_cont), so lo is never the "
        "interface its flows are judged by"
    ),
}


def test_every_rule_is_decided_by_traffic(tmp_path: Path) -> None:
    out, killers = tmp_path / "mutation.json", tmp_path / "killers.json"
    killers.write_text(json.dumps(KILLED_BY_TESTS))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(out), "--killers", str(killers)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    print(done.stdout)  # the table (rule -> killing probes), shown with -s or on failure
    shown = f"\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert out.exists(), f"bench/mutation.py exited {done.returncode} without results\n{shown}"
    result = json.loads(out.read_text())
    assert not result["problems"], shown
    by_probes = {r["key"] for r in result["results"] if r["killed_in"]}
    stale = sorted(set(KILLED_BY_TESTS) & by_probes)
    assert not stale, "killed by probes: remove from KILLED_BY_TESTS:\n" + "\n".join(stale) + shown
    survivors = set(result["survivors"])
    allowed = set(SURVIVORS_WITH_REASON)
    new = sorted(survivors - allowed)
    killed = sorted(allowed - survivors)
    assert not new, "mutants nothing kills, in no list:\n" + "\n".join(new) + shown
    assert not killed, "now killed: remove from the survivors' lists:\n" + "\n".join(killed) + shown
    assert done.returncode == (1 if survivors else 0), shown
