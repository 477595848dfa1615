"""The schema and its validation: every bad value is refused with a one-line error."""

from __future__ import annotations

import json
from collections.abc import Callable

import netaddr
import pytest

from mullvad_allow_k8s import marks
from mullvad_allow_k8s.detect import DetectError, Found
from mullvad_allow_k8s.presets import PRESETS
from mullvad_allow_k8s.settings import (
    FIELDS,
    SCHEMA,
    Detection,
    SettingsError,
    migrate,
    parse_json,
    parse_settings_file,
    render_settings_file,
    resolve,
)


def settle(**values: str) -> object:
    return resolve([values])


def test_defaults_with_nothing_detected_are_kubeadm_with_its_api_server_port() -> None:
    s = resolve([])
    assert s.as_strings() == {
        "PRESET": "auto",
        "POD_CIDRS": "10.244.0.0/16",
        "SERVICE_CIDRS": "10.96.0.0/12",
        "NODE_NETWORKS": "none",
        "MACHINE_ADDRESSES": "auto",
        "PUBLIC_ADDRESSES": "",
        "HOST_PORTS": "6443",
        "TUNNEL_INTERFACE": "wg0-mullvad",
        "CLUSTER_INTERFACES": "antrea-* br-* bridge cali* cbr0 cilium_* cni* docker0 flannel* "
        "genev* kube-bridge kube-ipvs0 lxc* ovn0 podman* tunl0 veth* virbr* vxlan.calico weave",
        "OUTPUT": "/etc/nftables.d/k8s_bypass_mullvad.nft",
        "BRIDGE_TABLE": "no",
    }
    assert s.host_ports == ((6443, 6443),)


@pytest.mark.parametrize(
    ("preset", "ports"),
    [
        ("kubeadm", "6443"),
        ("k3s", "6443"),
        ("k0s", "6443"),
        ("rke2", "6443,9345"),
        ("microk8s", "16443"),
        ("minikube-none", "8443"),
        ("minikube", "none"),
        ("minikube-kvm2", "none"),
        ("kind", "none"),
        ("k3d", "none"),
    ],
)
def test_host_ports_default_to_the_presets_api_server(preset: str, ports: str) -> None:
    assert settle(PRESET=preset).as_strings()["HOST_PORTS"] == ports
    assert PRESETS[preset].host_ports_source


def test_host_ports_none_or_a_list_win_over_the_preset() -> None:
    assert settle(PRESET="rke2", HOST_PORTS="none").host_ports == ()
    assert settle(PRESET="kind", HOST_PORTS="443 6443,8443-8444").host_ports == (
        (443, 443),
        (6443, 6443),
        (8443, 8444),
    )
    custom = settle(PRESET="custom", POD_CIDRS="10.1.0.0/16", SERVICE_CIDRS="10.2.0.0/16")
    assert custom.host_ports == ()


def test_old_default_inbound_ports_goes_with_a_note() -> None:
    current, notes = migrate({"PRESET": "k3s", "INBOUND_PORTS": "non-ephemeral"})
    assert current == {"PRESET": "k3s"}
    (note,) = notes
    assert note.startswith("INBOUND_PORTS='non-ephemeral' is retired (0.2.0:")
    assert resolve([current]).host_ports == ((6443, 6443),)


def test_an_explicit_inbound_port_list_keeps_working_as_host_ports() -> None:
    current, notes = migrate({"INBOUND_PORTS": "80,443,6443", "EPHEMERAL_PORTS": "auto"})
    assert current == {"HOST_PORTS": "80,443,6443"}
    assert len(notes) == 2 and "now HOST_PORTS='80,443,6443'" in notes[0]
    assert "EPHEMERAL_PORTS='auto' is retired" in notes[1]
    # ... unless HOST_PORTS is set too: then that wins.
    current, notes = migrate({"INBOUND_PORTS": "80", "HOST_PORTS": "6443"})
    assert current == {"HOST_PORTS": "6443"} and "HOST_PORTS is set too and wins" in notes[0]


def test_retired_keys_are_read_but_never_resolved_unmigrated() -> None:
    assert parse_settings_file("INBOUND_PORTS=non-ephemeral\n") == {
        "INBOUND_PORTS": "non-ephemeral"
    }
    assert parse_json('{"EPHEMERAL_PORTS": "auto"}') == {"EPHEMERAL_PORTS": "auto"}
    with pytest.raises(SettingsError, match=r"^INBOUND_PORTS: '80': retired \(0.2.0"):
        resolve([{"INBOUND_PORTS": "80"}])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_to_private_non_overlapping_ranges(name: str) -> None:
    s = resolve([{"PRESET": name}])
    pods, services = netaddr.IPSet(s.pod_cidrs), netaddr.IPSet(s.service_cidrs)
    nodes = netaddr.IPSet(net for net, _ in s.node_networks)
    # A cluster on this machine shows pods and services; one in containers or VMs only
    # its node network.
    assert (pods and services) or nodes
    assert not (pods & services) and not ((pods | services) & nodes)
    everything = pods | services | nodes
    assert everything.issubset(netaddr.IPSet(marks.PRIVATE_RANGES))
    assert not everything & netaddr.IPSet(marks.PROTECTED_V4 + marks.PROTECTED_V6)
    assert PRESETS[name].source
    assert not nodes or PRESETS[name].node_networks_source


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_preset_range_lies_in_mullvads_tunnel_pool(name: str) -> None:
    """Mullvad's tunnel addresses come from 10.64.0.0/10: a default range there could
    hold the tunnel's own address (protected at load) and clash with its routes."""
    s = resolve([{"PRESET": name}])
    ranges = [*s.pod_cidrs, *s.service_cidrs, *(net for net, _ in s.node_networks)]
    pool = netaddr.IPSet(["10.64.0.0/10", "100.64.0.0/24"])
    inside = [str(n) for n in ranges if netaddr.IPSet([n]) & pool]
    # kubeadm's (and k0s' and minikube-none's) service range 10.96.0.0/12 is the one
    # known exception: upstream's default, protected by the tunnel-address element.
    assert inside in ([], ["10.96.0.0/12"]), inside


def test_explicit_ranges_win_over_the_preset_and_are_merged() -> None:
    s = resolve(
        [{"PRESET": "k3s", "POD_CIDRS": "10.42.0.0/24, 10.42.1.0/24 10.42.0.0/24 fd00:42::/56"}],
    )
    assert [str(n) for n in s.pod_cidrs] == ["10.42.0.0/23", "fd00:42::/56"]
    assert [str(n) for n in s.service_cidrs] == ["10.43.0.0/16"]


def test_later_sources_win() -> None:
    s = resolve([{"PRESET": "k3s"}, {"PRESET": "microk8s"}])
    assert s.preset == "microk8s"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("POD_CIDRS", "10.0.0.1/8", "host bits set (did you mean 10.0.0.0/8?)"),
        ("POD_CIDRS", "10.244.0.0", "not a CIDR range"),
        ("POD_CIDRS", "10.244.0.0/33", "prefix length must be 0-32"),
        ("POD_CIDRS", "10.244.0.0/-1", "not a CIDR range"),
        ("POD_CIDRS", "300.1.0.0/16", "not an IPv4 or IPv6 address"),
        ("POD_CIDRS", "10.244/16", "not an IPv4 or IPv6 address"),
        ("POD_CIDRS", "0.0.0.0/0", "covers the whole address space"),
        ("POD_CIDRS", "::/0", "covers the whole address space"),
        ("POD_CIDRS", "8.8.8.0/24", "not a private range"),
        ("SERVICE_CIDRS", "2001:db8::/64", "not a private range"),
        ("POD_CIDRS", "10.0.0.0/8", "covers Mullvad's own addresses"),
        ("SERVICE_CIDRS", "10.64.0.0/10", "covers Mullvad's own addresses"),
        ("POD_CIDRS", "100.64.0.0/16", "covers Mullvad's own addresses"),
        ("POD_CIDRS", "fc00:bbbb:bbbb::/48", "covers Mullvad's own addresses"),
        ("POD_CIDRS", "10.244.0.0/16}; flush ruleset", "not a CIDR range"),
        ("SERVICE_CIDRS", "10.244.8.0/24", "overlaps POD_CIDRS"),
        ("MACHINE_ADDRESSES", "127.0.0.1", "a loopback address"),
        ("MACHINE_ADDRESSES", "fe80::1", "a link-local address"),
        ("MACHINE_ADDRESSES", "224.0.0.1", "a multicast address"),
        ("MACHINE_ADDRESSES", "0.0.0.0", "the unspecified address"),
        ("MACHINE_ADDRESSES", "10.64.0.1", "one of Mullvad's in-tunnel addresses"),
        ("MACHINE_ADDRESSES", "192.168.1.300", "not an IPv4 or IPv6 address"),
        ("PUBLIC_ADDRESSES", "203.0.113.7 }", "not an IPv4 or IPv6 address"),
        ("POD_CIDRS", "fc00::/7", "covers Mullvad's own addresses (fc00:bbbb:bbbb:bb01::/64"),
        ("POD_CIDRS", "fc00::/8", "covers Mullvad's own addresses (fc00:bbbb:bbbb:bb01::/64"),
        ("POD_CIDRS", "fd00::/129", "prefix length must be 0-128"),
        ("HOST_PORTS", "0", "ports must be 1-65535"),
        ("HOST_PORTS", "443-80", "ports must be 1-65535, low-high"),
        ("HOST_PORTS", "http", "not a port or port range"),
        ("HOST_PORTS", "70000", "ports must be 1-65535"),
        ("TUNNEL_INTERFACE", 'wg0" accept', "not an interface name"),
        ("TUNNEL_INTERFACE", "a-very-long-interface", "not an interface name"),
        ("OUTPUT", "relative.nft", "must be an absolute path"),
        ("OUTPUT", "/etc/../x.nft", "without '..'"),
        ("OUTPUT", "/etc/x\n.nft", "must be an absolute path"),
        ("BRIDGE_TABLE", "maybe", "must be yes or no"),
        ("CLUSTER_INTERFACES", "*", "not an interface name or NAME* pattern"),
        ("CLUSTER_INTERFACES", "cni0 eth0;", "not an interface name or NAME* pattern"),
        ("CLUSTER_INTERFACES", "wg*", "matches the tunnel interface wg0-mullvad"),
        ("CLUSTER_INTERFACES", "wg0-mullvad", "matches the tunnel interface"),
        ("CLUSTER_INTERFACES", "", "empty"),
        ("PRESET", "openshift", "unknown preset"),
    ],
)
def test_bad_values_give_one_line_errors_naming_field_and_value(
    key: str, value: str, reason: str
) -> None:
    with pytest.raises(SettingsError) as err:
        settle(**{key: value})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{key}: ")
    assert reason in message
    assert err.value.key == key


def test_custom_preset_needs_ranges() -> None:
    with pytest.raises(SettingsError, match="POD_CIDRS: 'auto': empty, and no NODE_NETWORKS"):
        settle(PRESET="custom")
    with pytest.raises(SettingsError, match=r"SERVICE_CIDRS: '': empty \(a cluster on this"):
        settle(PRESET="custom", POD_CIDRS="10.1.0.0/16", SERVICE_CIDRS="")
    nodes_only = settle(PRESET="custom", NODE_NETWORKS="172.18.0.0/16@br-0123456789ab")
    assert nodes_only.pod_cidrs == () and len(nodes_only.node_networks) == 1


def test_machine_addresses_list_is_deduplicated_and_sorted() -> None:
    s = settle(MACHINE_ADDRESSES="192.168.1.20 2001:db8::1 192.168.1.10/32 192.168.1.20")
    assert [str(a) for a in s.machine_addresses] == ["192.168.1.10", "192.168.1.20", "2001:db8::1"]


def test_interface_patterns_drop_names_a_wildcard_covers() -> None:
    s = settle(CLUSTER_INTERFACES="veth* vethwe* cni0 cni* eth0 eth0")
    assert s.cluster_interfaces == ("cni*", "eth0", "veth*")


def test_settings_file_parsing_quotes_comments_and_errors() -> None:
    text = """
# comment
PRESET=k3s
POD_CIDRS="10.42.0.0/16 fd00:42::/56"   # trailing comment
SERVICE_CIDRS='10.43.0.0/16'
"""
    assert parse_settings_file(text) == {
        "PRESET": "k3s",
        "POD_CIDRS": "10.42.0.0/16 fd00:42::/56",
        "SERVICE_CIDRS": "10.43.0.0/16",
    }
    with pytest.raises(SettingsError, match=r"^settings file line 2: 'PODCIDRS=1': unknown"):
        parse_settings_file("\nPODCIDRS=1\n")
    with pytest.raises(SettingsError, match="not a KEY=VALUE line"):
        parse_settings_file("rm -rf /\n")
    with pytest.raises(SettingsError, match="cannot parse quoting"):
        parse_settings_file('POD_CIDRS="10.0.0.0/16\n')


def test_json_source_accepts_lists_and_booleans() -> None:
    raw = parse_json(json.dumps({"POD_CIDRS": ["10.1.0.0/16"], "BRIDGE_TABLE": False}))
    assert raw == {"POD_CIDRS": "10.1.0.0/16", "BRIDGE_TABLE": "no"}
    with pytest.raises(SettingsError, match="unknown setting"):
        parse_json('{"podCidrs": []}')
    with pytest.raises(SettingsError, match="must be a string"):
        parse_json('{"POD_CIDRS": {"a": 1}}')
    with pytest.raises(SettingsError, match="not valid JSON"):
        parse_json("{")


def test_rendered_settings_file_round_trips_and_documents_every_field() -> None:
    s = settle(PRESET="k3s", PUBLIC_ADDRESSES="203.0.113.7", HOST_PORTS="80,443,6443")
    text = render_settings_file(s)
    for field in SCHEMA:
        assert f"\n{field.key}=" in text
    assert resolve([parse_settings_file(text)]) == s
    default_text = render_settings_file()
    assert resolve([parse_settings_file(default_text)]) == resolve([])


def test_schema_names_derive_flags_and_nix_options() -> None:
    assert FIELDS["POD_CIDRS"].flag == "--pod-cidrs"
    assert FIELDS["POD_CIDRS"].nix_option == "podCidrs"
    assert len({f.flag for f in SCHEMA}) == len(SCHEMA)
    assert {f.key for f in SCHEMA if f.asked} == {
        "PRESET",
        "POD_CIDRS",
        "SERVICE_CIDRS",
        "NODE_NETWORKS",
        "MACHINE_ADDRESSES",
        "PUBLIC_ADDRESSES",
        "HOST_PORTS",
    }


# ------------------------------------------------------------- auto: detected ranges


def found(distribution: str, kind: str, network: str, interface: str | None = None) -> Found:
    return Found(distribution, kind, network, interface, f"test source of {network}")


def detected(*hits: Found, errors: tuple[DetectError, ...] = ()) -> Callable[[], Detection]:
    calls: list[int] = []

    def run() -> Detection:
        calls.append(1)
        return list(hits), list(errors)

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_auto_takes_what_is_detected_and_says_where_it_was_read() -> None:
    s = resolve(
        [],
        detected(
            found("k3s", "pods", "10.42.0.0/16", "cni0"),
            found("k3s", "services", "10.43.0.0/16"),
        ),
    )
    assert (s.preset, s.as_strings()["HOST_PORTS"]) == ("auto", "6443")  # k3s' preset
    assert [str(n) for n in s.pod_cidrs + s.service_cidrs] == ["10.42.0.0/16", "10.43.0.0/16"]
    assert s.origins == (
        "PRESET=auto: found k3s",
        "POD_CIDRS 10.42.0.0/16: test source of 10.42.0.0/16",
        "SERVICE_CIDRS 10.43.0.0/16: test source of 10.43.0.0/16",
    )


def test_auto_finds_nothing_and_falls_back_to_kubeadm_saying_so() -> None:
    s = resolve([], detected())
    assert [str(n) for n in s.pod_cidrs] == ["10.244.0.0/16"]
    assert s.origins[0] == "PRESET=auto: no cluster found, kubeadm's defaults"
    assert "POD_CIDRS: nothing detected, the preset's (kubeadm)" in s.origins


def test_kind_node_network_is_bound_to_the_bridge_it_was_found_on() -> None:
    s = resolve(
        [],
        detected(
            found("kind", "nodes", "172.19.0.0/16", "br-0123456789ab"),
            found("kind", "nodes", "fc00:f853:ccd:e793::/64", "br-0123456789ab"),
        ),
    )
    assert s.as_strings()["NODE_NETWORKS"] == (
        "172.19.0.0/16@br-0123456789ab fc00:f853:ccd:e793::/64@br-0123456789ab"
    )
    # kind's host never sees pods or services: none are exempted, no host port either.
    assert (s.pod_cidrs, s.service_cidrs, s.host_ports) == ((), (), ())


def test_without_a_detected_bridge_a_node_network_gets_the_presets_pattern() -> None:
    s = resolve([], detected(found("minikube", "nodes", "192.168.49.2/32")))
    assert s.as_strings()["NODE_NETWORKS"] == "192.168.49.2/32@br-*"
    kvm = resolve([], detected(found("minikube", "nodes", "192.168.39.0/24", "virbr1")))
    assert "PRESET=auto: found minikube-kvm2" in kvm.origins


def test_a_preset_takes_only_its_own_distributions_ranges() -> None:
    hits = detected(
        found("kubeadm", "services", "10.96.0.0/12"),
        found("k3s", "pods", "10.52.0.0/16"),
        found("k3s", "services", "10.53.0.0/16"),
    )
    s = resolve([{"PRESET": "k3s"}], hits)
    assert [str(n) for n in s.pod_cidrs + s.service_cidrs] == ["10.52.0.0/16", "10.53.0.0/16"]


def test_explicit_values_are_not_overridden_and_detection_is_not_run() -> None:
    hits = detected(found("k3s", "pods", "10.42.0.0/16"))
    s = resolve(
        [
            {
                "PRESET": "k3s",
                "POD_CIDRS": "10.1.0.0/16",
                "SERVICE_CIDRS": "10.2.0.0/16",
                "NODE_NETWORKS": "none",
            }
        ],
        hits,
    )
    assert [str(n) for n in s.pod_cidrs] == ["10.1.0.0/16"]
    assert hits.calls == []  # type: ignore[attr-defined]


def test_a_broken_file_stops_auto_with_its_one_line_reason() -> None:
    broken = DetectError("/etc/rancher/k3s/config.yaml", "not valid YAML: line 3")
    with pytest.raises(SettingsError) as err:
        resolve([], detected(found("kind", "nodes", "172.18.0.0/16", "br-1"), errors=(broken,)))
    assert str(err.value) == (
        "POD_CIDRS: 'auto': cannot read the cluster's ranges: "
        "/etc/rancher/k3s/config.yaml: not valid YAML: line 3"
    )


def test_detected_ranges_are_validated_like_given_ones() -> None:
    """A detected range in Mullvad's addresses is refused, never exempted."""
    with pytest.raises(SettingsError, match=r"POD_CIDRS: '10\.64\.0\.0/16': covers Mullvad's own"):
        resolve([], detected(found("k3s", "pods", "10.64.0.0/16")))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("172.18.0.0/16", "not CIDR@INTERFACE"),
        ("@br-1", "not CIDR@INTERFACE"),  # no range: once an AttributeError
        ("172.18.0.0/16@", "not an interface name or NAME* pattern"),
        ("172.18.0.0/16@*", "not an interface name or NAME* pattern"),
        ('172.18.0.0/16@br-1"', "not an interface name or NAME* pattern"),
        ("172.18.0.0/16@wg0-mullvad", "matches the tunnel interface wg0-mullvad"),
        ("172.18.0.0/16@wg*", "matches the tunnel interface wg0-mullvad"),
        ("8.8.8.0/24@br-1", "not a private range"),
        ("10.64.0.0/16@br-1", "covers Mullvad's own addresses"),
        ("172.18.0.1/16@br-1", "host bits set"),
    ],
)
def test_bad_node_networks_are_refused_naming_the_reason(value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as err:
        settle(PRESET="kind", NODE_NETWORKS=value)
    assert err.value.key == "NODE_NETWORKS" and reason in str(err.value)
    assert "\n" not in str(err.value)


def test_node_networks_may_not_overlap_the_cluster_ranges() -> None:
    with pytest.raises(SettingsError, match="overlaps POD_CIDRS or SERVICE_CIDRS"):
        settle(PRESET="kubeadm", NODE_NETWORKS="10.244.1.0/24@br-1")


def test_another_distributions_broken_file_does_not_stop_a_preset() -> None:
    broken = DetectError("/etc/rancher/k3s/config.yaml", "not valid YAML: line 3")
    broken.distribution = "k3s"
    hits = detected(found("kind", "nodes", "172.19.0.0/16", "br-1"), errors=(broken,))
    s = resolve([{"PRESET": "kind"}], hits)
    assert s.as_strings()["NODE_NETWORKS"] == "172.19.0.0/16@br-1"
    with pytest.raises(SettingsError, match=r"k3s/config\.yaml: not valid YAML"):
        resolve([{"PRESET": "k3s"}], hits)


def test_node_networks_another_entry_covers_are_dropped() -> None:
    s = settle(
        PRESET="kind",
        NODE_NETWORKS="172.18.0.0/16@br-1 172.18.0.0/24@br-1 172.18.0.0/16@br-* 10.89.0.0/24@x",
    )
    assert s.as_strings()["NODE_NETWORKS"] == "10.89.0.0/24@x 172.18.0.0/16@br-*"


def test_node_networks_that_overlap_without_covering_are_refused() -> None:
    with pytest.raises(SettingsError) as err:
        settle(PRESET="kind", NODE_NETWORKS="172.16.0.0/12@br-1 172.18.0.0/16@br-*")
    assert str(err.value) == (
        "NODE_NETWORKS: '172.18.0.0/16@br-*': overlaps 172.16.0.0/12@br-1 without either "
        "covering the other (give each bridge its own range)"
    )
