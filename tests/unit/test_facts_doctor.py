"""Machine facts read from a fake /proc tree, and the doctor findings built on them."""

from __future__ import annotations

from pathlib import Path

from mullvad_allow_k8s import doctor
from mullvad_allow_k8s.facts import MachineFacts
from mullvad_allow_k8s.settings import resolve
from tests.conftest import FixedFacts

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


def test_listening_ports_skip_loopback(tmp_path: Path) -> None:
    facts = fake_proc(
        tmp_path,
        ["00000000:0016", "0100007F:0277", "0A00000A:1A0B"],  # *:22, 127.0.0.1:631, 10.0.0.10:6667
        ["00000000000000000000000001000000:0019", "00000000000000000000000000000000:01BB"],
    )
    assert facts.listening_tcp_ports() == {22, 6667, 443}
    assert facts.ephemeral_ports() == (40000, 50000)


def test_missing_proc_files_give_linux_defaults(tmp_path: Path) -> None:
    facts = MachineFacts(root=tmp_path)
    assert facts.ephemeral_ports() == (32768, 60999)
    assert facts.listening_tcp_ports() == set()
    assert facts.sysctl("net.bridge.bridge-nf-call-iptables") is None


def test_doctor_warns_about_other_services_on_exempted_ports(tmp_path: Path) -> None:
    facts = fake_proc(
        tmp_path, ["00000000:0016", "00000000:192B", "00000000:7690"]
    )  # 22, 6443, 30352
    settings = resolve([], FixedFacts())
    (finding,) = doctor.check_exposed_services(settings, facts)
    assert finding.level == doctor.WARN and "TCP port(s) 22 listen" in finding.message
    narrow = resolve([{"INBOUND_PORTS": "6443,30000-32767"}], FixedFacts())
    (finding,) = doctor.check_exposed_services(narrow, facts)
    assert finding.level == doctor.OK


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
    v6 = resolve([{"POD_CIDRS": "10.244.0.0/16 fd00:10:244::/56"}], FixedFacts())
    table = [{"table": {"name": "mullvad"}}]
    (warn,) = doctor.check_ipv6_lan(v6, table)
    assert warn.level == doctor.WARN and warn.fix == "mullvad lan set allow"
    assert doctor.check_ipv6_lan(v6, [*table, lan])[0].level == doctor.OK
    assert doctor.check_ipv6_lan(resolve([], FixedFacts()), table) == []
