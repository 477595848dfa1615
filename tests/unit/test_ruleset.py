"""The renderer: deterministic, commented, one table, sets instead of per-address rules."""

from __future__ import annotations

import re

import netaddr

from mullvad_allow_k8s import marks, ruleset
from mullvad_allow_k8s.settings import resolve


def render(**values: str) -> str:
    return ruleset.render(resolve([values]))


def rules(text: str) -> list[str]:
    """Statement lines of the chains (not comments, sets or chain headers)."""
    out, in_chain = [], False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("chain "):
            in_chain = True
        elif line == "}":
            in_chain = False
        elif in_chain and line and not line.startswith(("#", "type ")):
            out.append(line)
    return out


def chain_rules(text: str, chain: str) -> list[str]:
    body = text.split(f"chain {chain} {{")[1].split("\n\t}", maxsplit=1)[0]
    return rules("chain x {" + body + "\n}")


def test_same_settings_same_bytes() -> None:
    assert render(PRESET="k3s") == render(PRESET="k3s")
    assert render(PRESET="k3s") != render(PRESET="kind")


def test_header_records_settings_and_how_to_regenerate() -> None:
    text = render(PRESET="microk8s")
    assert "#   POD_CIDRS=10.1.0.0/16\n" in text
    assert "#   SERVICE_CIDRS=10.152.183.0/24\n" in text
    assert "mullvad-allow-k8s apply" in text.split("table ")[0]
    for _, const in marks.MARK_INDEX:
        assert const.nft in text.split("\ntable ")[0]


def test_one_inet_table_replaced_atomically_and_seed_tables_removed() -> None:
    text = render()
    assert text.count("\ntable inet mullvad_allow_k8s {") == 1
    assert "table bridge mullvad_allow_k8s {" not in text
    for family, name in [("inet", "mullvad_allow_k8s"), *marks.SEED_TABLES]:
        assert f"\ntable {family} {name}\ndelete table {family} {name}\n" in text
    preamble_end = text.index("\ntable inet mullvad_allow_k8s {")
    assert text.index("delete table inet bypass-mullvad") < preamble_end


def test_every_rule_has_a_comment_above_it() -> None:
    text = render()
    statements = set(rules(text))
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        if line in statements:
            previous = next(p for p in reversed(lines[:i]) if p not in statements)
            assert previous.startswith("#"), line


def test_rule_count_does_not_grow_with_addresses() -> None:
    few = rules(render(POD_CIDRS="10.1.0.0/16", MACHINE_ADDRESSES="192.168.1.2"))
    many_pods = " ".join(f"10.{i}.0.0/16" for i in range(1, 60))
    many = rules(render(POD_CIDRS=many_pods, MACHINE_ADDRESSES="192.168.1.2 192.168.1.3 ::ffff:1"))
    assert len(few) == len(many)


def test_marks_and_priorities_come_from_marks_module() -> None:
    text = render()
    assert f"ct mark set {marks.CT_MARK.nft}" in text
    assert f"meta mark set {marks.FW_MARK.nft}" in text
    assert f"hook prerouting priority {marks.PREROUTING_PRIORITY.value};" in text
    assert f"type route hook output priority {marks.OUTPUT_PRIORITY.value};" in text
    assert f"hook forward priority {marks.GUARD_PRIORITY.value};" in text
    # The rules themselves, not the header's mark index, carry Mullvad's literal values.
    body = text.split("\ntable inet mullvad_allow_k8s {", 1)[1]
    assert "ct mark set 0x00000f41" in body and "meta mark set 0x6d6f6c65" in body


def test_auto_machine_addresses_use_fib_and_explicit_ones_a_set() -> None:
    auto = render()
    assert "fib daddr . iif type local" in auto and "@machine_v4" not in auto
    explicit = render(MACHINE_ADDRESSES="192.168.1.10 2001:db8::10")
    assert "fib daddr . iif type local" not in explicit
    assert re.search(r"set machine_v4 \{[^}]*elements = \{ 192\.168\.1\.10 \}", explicit)
    assert re.search(r"set machine_v6 \{[^}]*elements = \{ 2001:db8::10 \}", explicit)


def test_tunnel_traffic_is_never_marked_as_inbound() -> None:
    text = render(TUNNEL_INTERFACE="wg1")
    for v in ("v4", "v6"):
        new = chain_rules(text, f"prerouting_new_{v}")
        (candidate,) = [r for r in new if f"ct mark set {marks.TENTATIVE_CT_MARK.nft}" in r]
        assert candidate == (
            'iifname != "wg1" iifname != @cluster_interfaces meta mark 0 meta l4proto '
            f"{{ tcp, udp }} ct mark set {marks.TENTATIVE_CT_MARK.nft} "
            f"meta mark set {marks.FW_MARK.nft}"
        )
        # The other marks need a cluster interface, which the tunnel can never be.
        others = [r for r in new if "ct mark set" in r and r != candidate]
        assert others and all(r.startswith("iifname @cluster_interfaces ") for r in others)


def test_inbound_is_exempted_only_if_the_cluster_serves_it() -> None:
    """After DNAT: forwarded into a pod (not from a ClusterIP) or a HOST_PORTS port on a
    local address; everything else loses the ct mark (the fwmark went before DNAT; the
    packet mark is the DNAT chains' by then, kube-proxy's masquerade request)."""
    text = render()
    exempt, tentative = marks.CT_MARK.nft, marks.TENTATIVE_CT_MARK.nft
    assert chain_rules(text, "confirm") == [f"ct mark {tentative} goto confirm_candidate"]
    both = f"ct mark set {exempt} meta mark set {marks.FW_MARK.nft}"
    assert chain_rules(text, "confirm_candidate") == [
        "ct status dnat ct original ip daddr != @cluster_v4 ip daddr @served_v4 "
        "goto confirm_served",
        "ct status dnat ct original ip6 daddr != @cluster_v6 ip6 daddr @served_v6 "
        "goto confirm_served",
        f"fib daddr . iif type local tcp dport @host_ports {both} return",
        f"ip daddr @public_v4 tcp dport @host_ports {both} return",
        f"ip6 daddr @public_v6 tcp dport @host_ports {both} return",
        "ct mark set 0x00000000",
    ]
    assert chain_rules(text, "confirm_served") == [
        f"meta mark != 0x00000000 {both} return",
        f"{both} ct label set {marks.KEEP_SOURCE_LABEL.nft}",
    ]
    assert f"hook prerouting priority {marks.CONFIRM_PRIORITY.value};" in text
    assert -100 < marks.CONFIRM_PRIORITY.value < 0  # after DNAT, before routing


def test_host_ports_are_the_only_ports_in_the_table() -> None:
    text = render(PRESET="rke2")
    assert re.search(r"set host_ports \{[^}]*elements = \{ 6443, 9345 \}", text)
    assert "th dport" not in text and text.count("dport @host_ports") == 3
    assert not re.search(r"set host_ports \{[^}]*elements", render(PRESET="kind"))


def test_pod_sources_count_only_from_cluster_interfaces() -> None:
    for v in ("v4", "v6"):
        new = chain_rules(render(), f"prerouting_new_{v}")
        pod = [r for r in new if "saddr @pod_" in r]
        assert len(pod) == 2 and all(r.startswith("iifname @cluster_interfaces ") for r in pod)
        # Anything else with a cluster source returns before the inbound candidates.
        ip = "ip" if v == "v4" else "ip6"
        spoofed = new.index(f"{ip} saddr @cluster_{v} return")
        assert all("saddr @pod_" not in r for r in new[spoofed:])


def test_protected_addresses_are_checked_before_any_mark() -> None:
    text = render()
    # prerouting sees the destination before DNAT; output_new after it, so it asks for
    # the original one.
    for chain, where in (("prerouting_new", ""), ("output_new", "ct original ")):
        for v, ip in (("v4", "ip"), ("v6", "ip6")):
            statements = chain_rules(text, f"{chain}_{v}")
            first_mark = next(i for i, r in enumerate(statements) if "ct mark set" in r)
            assert f"{where}{ip} daddr @protected_{v} return" in statements[:first_mark]


# The established rule of `prerouting`: exempted and parked flows, found by one
# comparison (the parked mark is the exemption with bit 31 set), the parked ones get the
# exemption back, and established packets the fwmark.
ESTABLISHED = (
    f"ct mark & 0x7fffffff == {marks.CT_MARK.nft} ct mark set {marks.CT_MARK.nft} "
    f'ct state established,related iifname != "wg0-mullvad" meta mark set {marks.FW_MARK.nft}'
)


def test_pod_flows_get_no_fwmark_on_their_first_packet() -> None:
    """Only established flows copy the ct mark to the fwmark: kube-proxy's 0x4000 bit stays
    clear on the first packet, the only one its nat chains see."""
    text = render()
    new, established = chain_rules(text, "prerouting")
    assert new.startswith("ct state new ct mark 0x00000000 ") and "meta mark" not in new
    assert established == ESTABLISHED
    pod = [
        r for v in ("v4", "v6") for r in chain_rules(text, f"prerouting_new_{v}") if "@pod_" in r
    ]
    assert len(pod) == 4 and not any("meta mark" in r for r in pod)
    assert marks.FW_MARK.value & 0x4000  # why: kube-proxy's masquerade bit


def test_the_mask_finds_the_exempted_and_the_parked_mark_and_no_other() -> None:
    """The parked mark differs from Mullvad's in bit 31 alone, which the mask clears; the
    tentative mark and no mark at all do not pass it."""
    exempt, parked, tentative = (
        int(m.nft, 16) for m in (marks.CT_MARK, marks.PARKED_CT_MARK, marks.TENTATIVE_CT_MARK)
    )
    passes = [m for m in (exempt, parked, tentative, 0) if m & 0x7FFFFFFF == exempt]
    assert passes == [exempt, parked] and exempt != parked


def by_family(guard: str, chain: str) -> str:
    return f"{guard} meta nfproto vmap {{ ipv4 : goto {chain}_v4, ipv6 : goto {chain}_v6 }}"


def test_established_flows_leave_every_chain_early() -> None:
    """Each base chain's rules only compare the conntrack state and ct mark before any
    lookup: a packet that is not ours to judge meets no set, and established packets at
    most 3 of our rules per hook."""
    text = render()
    ct = marks.CT_MARK.nft
    assert chain_rules(text, "prerouting") == [
        by_family("ct state new ct mark 0x00000000", "prerouting_new"),
        ESTABLISHED,
    ]
    # The route chain judges no new connection (output_guard does, after DNAT).
    assert chain_rules(text, "output") == [
        f"ct state established,related ct mark {ct} ct direction reply "
        f"meta mark set {marks.FW_MARK.nft}"
    ]
    assert chain_rules(text, "confirm") == [
        f"ct mark {marks.TENTATIVE_CT_MARK.nft} goto confirm_candidate"
    ]
    # Forged packets of flows the cluster started: two comparisons before the lookup,
    # so only exempted packets pay it.
    label = marks.CLUSTER_FLOW_LABEL.nft
    forged = f"ct mark {ct} ct label {label} iifname != @cluster_interfaces drop"
    assert chain_rules(text, "nat_park") == [
        by_family(f"ct state new ct mark {ct}", "nat_park_new")
    ]
    assert chain_rules(text, "forward_guard") == [
        by_family(f"ct state new ct mark {ct}", "forward_guard_new"),
        forged,
    ]
    assert chain_rules(text, "input_guard") == [
        f"ct state new ct mark {ct} ip daddr {marks.TUNNEL_POOL_V4} "
        "fib daddr . iif type != local ct mark set 0x00000000",
        forged,
    ]
    # Flows Mullvad's split tunnel marked (excluded processes) are not judged (netlab
    # probe excluded_ext_svc): only this machine's unmarked new connections go on.
    assert chain_rules(text, "output_guard") == [
        by_family("ct state new ct mark 0x00000000", "output_new")
    ]
    assert "output_guard_new" not in text
    assert "_established" not in text  # no chain of its own: one rule each, inline
    assert "unpark" not in text  # the parked mark is restored by the established rule
    # The host's own new connections outside the cluster leave output at its first rule.
    assert chain_rules(text, "output_new_v4")[0] == "ip daddr != @cluster_v4 return"


def test_flows_the_cluster_started_leave_only_by_cluster_interfaces() -> None:
    """Issue 21, finding 5: checked in postrouting, where the interface is the real one
    (after DNAT), before nat_park parks pod-to-pod flows' first packets."""
    text = render()
    ct, label = marks.CT_MARK.nft, marks.CLUSTER_FLOW_LABEL.nft
    assert chain_rules(text, "postrouting_guard") == [
        f"ct mark {ct} ct label {label} oifname != @cluster_interfaces drop"
    ]
    prio = marks.POSTROUTING_GUARD_PRIORITY.value
    assert f"type filter hook postrouting priority {prio};" in text
    assert isinstance(prio, int) and prio < marks.NAT_PARK_PRIORITY.value


def test_pod_sources_must_route_back_where_they_came_from() -> None:
    """Issue 21, findings 1 and 2: both pod rules, in both families, end their matches
    with the reverse-path test (so only pods' flows pay the lookup)."""
    text = render()
    for v in (4, 6):
        pods = [r for r in chain_rules(text, f"prerouting_new_v{v}") if "saddr @pod_" in r]
        assert len(pods) == 2
        for rule in pods:
            assert "fib saddr . iif oif exists ct mark set" in rule, rule


def test_pod_to_pod_flows_are_hidden_from_mullvads_masquerade() -> None:
    text = render()
    parked = marks.PARKED_CT_MARK.nft
    # Forwarded flows only: this machine's own flows to pods (from the bridge address,
    # in the pod range) are not parked, their next packets meet no restore (issue 21).
    local = marks.LOCAL_FLOW_LABEL.nft
    keep = marks.KEEP_SOURCE_LABEL.nft
    assert chain_rules(text, "nat_park_new_v4") == [
        f"ct label {local} return",
        f"ip saddr @pod_v4 ip daddr @pod_v4 ct mark set {parked} return",
        f"ct label {keep} snat ip to ip saddr",
    ]
    # A nat chain: only a flow's first packet meets it. It sets no NAT of its own but the
    # client's own address for connections from outside (below), so the nat chains after
    # it (kube-proxy's hairpin masquerade) still run for pods' flows.
    assert f"type nat hook postrouting priority {marks.NAT_PARK_PRIORITY.value};" in text
    nat = [r for r in rules(text) if re.search(r"\b(s|d)nat (to|ip6?) |masquerade|redirect", r)]
    assert nat == [f"ct label {keep} snat ip to ip saddr"]
    assert marks.NAT_PARK_PRIORITY.value < 100  # Mullvad's nat chain
    # The flow's next packet (reply or retransmission) gets the exemption back in
    # prerouting, before Mullvad's filters (priority 0), whatever its state.
    assert chain_rules(text, "prerouting")[1].startswith(
        f"ct mark & 0x7fffffff == {marks.CT_MARK.nft} ct mark set {marks.CT_MARK.nft} ct state "
    )
    assert marks.PREROUTING_PRIORITY.value < 0


def test_the_client_keeps_its_address_where_nobody_asks_for_a_masquerade() -> None:
    """Issue 23, item 3: a connection from outside keeps its source (IPv4) unless something
    marked it at DNAT (kube-proxy and the portmap plugin mark what they want masqueraded).
    The DNAT chains see it without our fwmark (a nat chain just before them: first packets
    only); the fwmark is back before routing."""
    text = render()
    fw, ct = marks.FW_MARK.nft, marks.CT_MARK.nft
    prio = marks.BEFORE_DNAT_PRIORITY.value
    assert isinstance(prio, int) and marks.PREROUTING_PRIORITY.value < prio < -100
    assert f"type nat hook prerouting priority {prio};" in text
    assert chain_rules(text, "before_dnat") == [
        f"ct mark {marks.TENTATIVE_CT_MARK.nft} meta mark {fw} meta mark set 0x00000000"
    ]
    assert int(marks.FW_MARK.value) & 0x6000 == 0x6000  # kube-proxy's and portmap's bits
    keep = marks.KEEP_SOURCE_LABEL.nft
    assert chain_rules(text, "confirm_served") == [
        f"meta mark != 0x00000000 ct mark set {ct} meta mark set {fw} return",
        f"ct mark set {ct} meta mark set {fw} ct label set {keep}",
    ]
    assert chain_rules(text, "nat_park_new_v4")[-1] == f"ct label {keep} snat ip to ip saddr"
    # IPv6 keeps Mullvad's masquerade (its pods could not resolve their gateway).
    assert "snat" not in "\n".join(chain_rules(text, "nat_park_new_v6"))
    label = marks.KEEP_SOURCE_LABEL.value
    assert label not in (marks.CLUSTER_FLOW_LABEL.value, marks.LOCAL_FLOW_LABEL.value)


def test_bridge_table_only_when_asked() -> None:
    text = render(BRIDGE_TABLE="yes")
    assert "\ntable bridge mullvad_allow_k8s {" in text


def test_large_element_lists_wrap() -> None:
    text = render(POD_CIDRS=" ".join(f"10.{i}.0.0/16" for i in range(1, 40)))
    assert max(len(line) for line in text.splitlines() if "elements" in line) < 100


def test_tunnel_elements_go_to_the_family_set() -> None:
    extra = ruleset.tunnel_elements([netaddr.IPAddress("10.99.1.2"), netaddr.IPAddress("fc00::5")])
    assert extra == (
        "add element inet mullvad_allow_k8s protected_v4 { 10.99.1.2 }\n"
        "add element inet mullvad_allow_k8s protected_v6 { fc00::5 }\n"
    )
