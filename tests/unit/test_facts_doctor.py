"""Machine facts read from a fake /proc tree, and the doctor findings built on them."""

from __future__ import annotations

from pathlib import Path

import netaddr
import pytest

from mullvad_allow_k8s import doctor, mullvad_state
from mullvad_allow_k8s.detect import DetectError, Found
from mullvad_allow_k8s.facts import MachineFacts
from mullvad_allow_k8s.settings import SettingsError, resolve

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"


def fake_proc(tmp_path: Path, tcp: list[str], tcp6: list[str] | None = None) -> MachineFacts:
    net = tmp_path / "proc" / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(HEADER + "".join(f"   0: {line} 00000000:0000 0A\n" for line in tcp))
    (net / "tcp6").write_text(HEADER + "".join(f"   0: {line} 0:0 0A\n" for line in tcp6 or []))
    sysctl = tmp_path / "proc" / "sys" / "net" / "ipv4"
    sysctl.mkdir(parents=True)
    (sysctl / "ip_local_port_range").write_text("40000\t50000\n")
    return MachineFacts(root=tmp_path)


def test_listening_sockets_skip_loopback(tmp_path: Path) -> None:
    facts = fake_proc(
        tmp_path,
        ["00000000:0016", "0100007F:0277", "0A00000A:1A0B"],  # *:22, 127.0.0.1:631, 10.0.0.10:6667
        ["00000000000000000000000001000000:0019", "00000000000000000000000000000000:01BB"],
    )
    assert [(str(ip), port) for ip, port in facts.listening_tcp()] == [
        ("0.0.0.0", 22),
        ("::", 443),
        ("10.0.0.10", 6667),
    ]


def test_missing_proc_files_give_nothing(tmp_path: Path) -> None:
    facts = MachineFacts(root=tmp_path)
    assert facts.listening_tcp() == []
    assert facts.sysctl("net.bridge.bridge-nf-call-iptables") is None


def test_doctor_lists_only_host_ports_as_reachable(tmp_path: Path) -> None:
    facts = fake_proc(
        tmp_path, ["00000000:0016", "00000000:192B", "00000000:7690", "0A00000A:192B"]
    )  # *:22, *:6443, *:30352, 10.0.0.10:6443 (an address not of this machine's LAN)
    monkey_addresses = [netaddr.IPAddress("192.168.1.100")]
    facts.machine_addresses = lambda tunnel: monkey_addresses  # type: ignore[method-assign]
    ports, reachable = doctor.check_exposed_services(resolve([]), facts)
    assert ports.message == "host ports exempted (HOST_PORTS, TCP): 6443"
    assert "reachable from outside: *:6443 (every other" in reachable.message
    (_, nothing) = doctor.check_exposed_services(resolve([{"HOST_PORTS": "none"}]), facts)
    assert "no listening socket" in nothing.message


def test_doctor_reports_ranges_overlapping_the_lan(tmp_path: Path) -> None:
    facts = MachineFacts(root=tmp_path)
    facts._addresses = [
        {"ifname": "eth0", "addr_info": [{"local": "192.168.1.100", "prefixlen": 24}]},
        {"ifname": "cni0", "addr_info": [{"local": "10.244.0.1", "prefixlen": 24}]},
    ]
    clean = doctor.check_overlaps(resolve([]), facts)
    assert [f.level for f in clean] == [doctor.OK]
    (bad,) = doctor.check_overlaps(resolve([{"POD_CIDRS": "192.168.0.0/16"}]), facts)
    assert bad.level == doctor.ERROR
    assert str(bad.message).startswith("POD_CIDRS: '192.168.0.0/16': overlaps 192.168.1.0/24")


def test_mullvad_table_check_parses_nft_json() -> None:
    accept = {
        "rule": {
            "chain": "forward",
            "expr": [
                {"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": 3905}},
                {"accept": None},
            ],
        }
    }

    def rule(chain: str) -> dict[str, object]:
        return {"rule": {**accept["rule"], "chain": chain}}

    (only_forward,) = doctor.check_mullvad([{"table": {"name": "mullvad"}}])
    assert only_forward.level == doctor.ERROR and "split tunnelling is unavailable" in (
        only_forward.message
    )
    findings = doctor.check_mullvad([rule("input"), rule("output")])
    assert [f.level for f in findings] == [doctor.OK, doctor.OK, doctor.ERROR]
    assert "older than 2023.5" in findings[2].message
    assert doctor.check_mullvad([])[0].level == doctor.WARN


def test_ipv6_pods_without_lan_sharing_get_a_warning() -> None:
    lan = {
        "rule": {
            "chain": "input",
            "expr": [
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                        "right": {"prefix": {"addr": "fc00::", "len": 7}},
                    }
                },
                {"accept": None},
            ],
        }
    }
    v6 = resolve([{"POD_CIDRS": "10.244.0.0/16 fd00:10:244::/56"}])
    table = [{"table": {"name": "mullvad"}}]
    (warn,) = doctor.check_ipv6_lan(v6, table)
    assert warn.level == doctor.WARN and warn.fix == "mullvad lan set allow"
    assert doctor.check_ipv6_lan(v6, [*table, lan])[0].level == doctor.OK
    assert doctor.check_ipv6_lan(resolve([]), table) == []
    nodes = resolve([{"PRESET": "kind", "NODE_NETWORKS": "fc00:f853:ccd:e793::/64@br-*"}])
    (warn,) = doctor.check_ipv6_lan(nodes, table)
    assert warn.level == doctor.WARN and "IPv6 nodes reach this machine" in warn.message
    assert "IPv6 pods" not in warn.message
    assert doctor.check_ipv6_lan(nodes, [*table, lan])[0].level == doctor.OK


def test_doctor_shows_what_auto_found_and_warns_of_gone_bridges_and_mullvads_pool(
    tmp_path: Path,
) -> None:
    facts = MachineFacts(root=tmp_path)
    facts._addresses = [{"ifname": "cni-podman1", "addr_info": []}]
    hits = [
        Found("kind", "nodes", "10.89.0.0/24", "cni-podman1", "podman network inspect kind"),
        Found("kind", "nodes", "172.19.0.0/16", "br-0123456789ab", "docker network inspect kind"),
    ]
    settings = resolve([], lambda: (hits, []))
    lines = [f.line() for f in doctor.check_cluster_ranges(settings, facts)]
    assert lines[0] == "[ok] detected: PRESET=auto: found kind"
    assert (
        "[ok] detected: NODE_NETWORKS 10.89.0.0/24@cni-podman1: podman network inspect kind"
        in lines
    )
    gone = [line for line in lines if "there is no interface" in line]
    assert len(gone) == 1 and "172.19.0.0/16@br-0123456789ab" in gone[0]  # cni-podman1 exists
    pool = [line for line in lines if "lies in 10.64.0.0/10" in line]
    assert len(pool) == 1 and pool[0].startswith("[warning] 10.89.0.0/24 lies in")


def test_doctor_warns_when_auto_found_no_cluster(tmp_path: Path) -> None:
    facts = MachineFacts(root=tmp_path)
    facts._addresses = []
    findings = doctor.check_cluster_ranges(resolve([], lambda: ([], [])), facts)
    assert findings[0].level == doctor.WARN
    assert findings[0].message == "PRESET=auto: no cluster found, kubeadm's defaults"
    # kubeadm's service range 10.96.0.0/12 lies in Mullvad's pool: said too
    assert any("10.96.0.0/12 lies in 10.64.0.0/10" in f.message for f in findings)


def test_an_ignored_source_is_named_and_the_others_still_count(tmp_path: Path) -> None:
    """Issue 20: a source root does not trust loses only its own finding; doctor says
    which and why."""
    kubeadm = Found("kubeadm", "services", "10.100.0.0/16", None, "/etc/kubernetes/x: --s")
    ignored = DetectError(
        "/etc/rancher/k3s/config.yaml", "ignored: the file is writable by every user", fatal=False
    )
    ignored.distribution = "k3s"
    settings = resolve([], lambda: ([kubeadm], [ignored]))
    assert settings.service_cidrs == (netaddr.IPNetwork("10.100.0.0/16"),)
    facts = MachineFacts(root=tmp_path)
    facts._addresses = []
    findings = doctor.check_cluster_ranges(settings, facts)
    warned = [f.line() for f in findings if "ignored source" in f.line()]
    assert len(warned) == 1 and "writable by every user" in warned[0]
    fatal = DetectError("/etc/rancher/k3s/config.yaml", "not valid YAML")
    with pytest.raises(SettingsError, match="not valid YAML"):
        resolve([], lambda: ([kubeadm], [fatal]))


def test_doctor_names_ipvs_clusterips_the_tunnel_guard_withholds(tmp_path: Path) -> None:
    """kube-proxy IPVS puts ClusterIPs on kube-ipvs0; in 10.64.0.0/10 the table cannot tell
    them from the tunnel's own address, so doctor says so and how to move them."""
    facts = MachineFacts(root=tmp_path)
    addr = [{"local": "10.96.0.10", "prefixlen": 32}, {"local": "10.96.0.1", "prefixlen": 32}]
    facts._addresses = [{"ifname": "kube-ipvs0", "addr_info": addr}]
    settings = resolve([{"PRESET": "kubeadm"}], lambda: ([], []))
    lines = [f.line() for f in doctor.check_cluster_ranges(settings, facts)]
    (ipvs,) = [line for line in lines if "IPVS" in line]
    assert ipvs.startswith("[error]") and "10.96.0.10, 10.96.0.1" in ipvs
    assert "--service-cidr" in ipvs
    facts._addresses = [{"ifname": "kube-ipvs0", "addr_info": [{"local": "10.43.0.10"}]}]
    assert not [f for f in doctor.check_cluster_ranges(settings, facts) if "IPVS" in f.line()]


def test_mullvads_split_tunnel_mechanism_from_its_mangle_chain() -> None:
    """net_cls (talpid-cgroup v1.rs classid 0x4d9f41) and cgroup2 (`socket cgroupv2 level
    1`, matched against the inode of /sys/fs/cgroup/mullvad-exclusions), as libnftables'
    JSON lists them; the cgroup2 rule is written here (this machine's cgroup v1 hybrid has
    no /sys/fs/cgroup path nft could resolve), the net_cls one is loaded in
    tests/kernel/test_doctor.py."""

    def table(match: dict[str, object]) -> list[dict[str, object]]:
        expr = [{"match": {"op": "==", **match}}, {"mangle": {"key": {"ct": {"key": "mark"}}}}]
        return [{"rule": {"family": "inet", "table": "mullvad", "chain": "mangle", "expr": expr}}]

    v1 = table({"left": {"meta": {"key": "cgroup"}}, "right": 5087041})
    v2 = table({"left": {"socket": {"key": "cgroupv2", "level": 1}}, "right": 4242})
    assert mullvad_state.split_mechanism(v1) == mullvad_state.NET_CLS
    assert mullvad_state.split_mechanism(v2) == mullvad_state.CGROUP2
    assert (
        mullvad_state.split_mechanism(table({"left": {"meta": {"key": "cgroup"}}, "right": 1}))
        is None
    )
    assert mullvad_state.split_mechanism([]) is None


def test_a_range_in_the_tunnel_pool_names_the_distributions_own_setting(tmp_path: Path) -> None:
    """kubeadm's 10.96.0.0/12 lies in 10.64.0.0/10: the fix names kubeadm's --service-cidr,
    not a Podman command; a kind node network names kind's network."""
    facts = MachineFacts(root=tmp_path)
    facts._addresses = []
    kubeadm = resolve([{"PRESET": "kubeadm"}], lambda: ([], []))
    (line,) = [
        f.line()
        for f in doctor.check_cluster_ranges(kubeadm, facts)
        if "10.96.0.0/12 lies in" in f.line()
    ]
    assert "kubeadm init --service-cidr" in line and "podman" not in line
    kind = Found("kind", "nodes", "10.89.0.0/24", "cni-podman1", "podman network inspect kind")
    found = resolve([], lambda: ([kind], []))
    (line,) = [
        f.line()
        for f in doctor.check_cluster_ranges(found, facts)
        if "10.89.0.0/24 lies in" in f.line()
    ]
    assert "docker network create --subnet ... kind" in line
