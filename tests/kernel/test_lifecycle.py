"""apply / reapply / status / remove against the real kernel, in private network namespaces."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Netns

pytestmark = pytest.mark.kernel

SEED = """
table inet bypass-mullvad {
  chain prerouting { type filter hook prerouting priority -10; policy accept;
    ip saddr 10.244.0.0/24 ct mark set 0x00000f41
  }
}
table bridge k8s-bypass-mullvad {
  chain prerouting { type filter hook prerouting priority -10; policy accept;
  }
}
"""


def tables(ns: Netns) -> set[tuple[str, str]]:
    data = json.loads(ns.nft_json("list tables"))
    return {(t["table"]["family"], t["table"]["name"]) for t in data["nftables"] if "table" in t}


def ruleset(ns: Netns) -> str:
    return ns.sh("nft list ruleset").stdout


def settings_file(tmp_path: Path, **extra: str) -> Path:
    values = {"OUTPUT": str(tmp_path / "nftables.d" / "k8s_bypass_mullvad.nft"), **extra}
    path = tmp_path / "settings"
    path.write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))
    return path


@pytest.mark.parametrize("backend", ["bindings", "command"])
def test_apply_reapply_status_remove(
    netns_factory: Callable[[str], Netns], tmp_path: Path, backend: str
) -> None:
    """The same lifecycle through libnftables and through the nft command fallback."""
    ns = netns_factory("life")
    conf = settings_file(tmp_path)
    env = {"MULLVAD_ALLOW_K8S_BACKEND": backend}
    assert ns.cli("status", "--settings", str(conf), **env).returncode == 3

    first = ns.cli("apply", "--settings", str(conf), **env)
    assert first.returncode == 0, first.stderr
    assert ("inet", "mullvad_allow_k8s") in tables(ns)
    loaded = ruleset(ns)
    assert (tmp_path / "nftables.d" / "k8s_bypass_mullvad.nft").exists()

    status = ns.cli("status", "--settings", str(conf), **env)
    assert status.returncode == 0, status.stdout
    assert "loaded, matches the settings" in status.stdout
    assert "node networks (NODE_NETWORKS): none\n" in status.stdout

    again = ns.cli("apply", "--settings", str(conf), **env)
    assert again.returncode == 0, again.stderr
    assert ruleset(ns) == loaded  # idempotent: same table, not a second copy

    # Settings changed but not applied: status says so.
    conf.write_text(conf.read_text() + "PRESET=k3s\n")
    stale = ns.cli("status", "--settings", str(conf), **env)
    assert stale.returncode == 3 and "loaded, but from other settings" in stale.stdout

    ns.sh("nft add table inet other")
    gone = ns.cli("remove", "--settings", str(conf), **env)
    assert gone.returncode == 0, gone.stderr
    assert tables(ns) == {("inet", "other")}  # only ours removed
    assert ns.cli("remove", "--settings", str(conf)).returncode == 0  # removing twice is fine


def test_apply_removes_the_seed_tables(
    netns_factory: Callable[[str], Netns], tmp_path: Path
) -> None:
    ns = netns_factory("seed")
    ns.sh(f"nft -f - <<'EOF'\n{SEED}\nEOF")
    assert {("inet", "bypass-mullvad"), ("bridge", "k8s-bypass-mullvad")} <= tables(ns)
    assert (
        "old k8s_bypass_mullvad.nft"
        in ns.cli("status", "--settings", str(settings_file(tmp_path))).stdout
    )
    result = ns.cli("apply", "--settings", str(settings_file(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert tables(ns) == {("inet", "mullvad_allow_k8s")}


def test_failed_load_keeps_previous_tables_and_file(
    netns_factory: Callable[[str], Netns], tmp_path: Path
) -> None:
    ns = netns_factory("fail")
    conf = settings_file(tmp_path)
    assert ns.cli("apply", "--settings", str(conf)).returncode == 0
    before = ruleset(ns)
    output = tmp_path / "nftables.d" / "k8s_bypass_mullvad.nft"
    good_file = output.read_text()

    # A corrupted file loaded at boot (--from-file): nothing changes.
    output.write_text(good_file[: len(good_file) // 2])
    broken = ns.cli("apply", "--settings", str(conf), "--from-file")
    assert broken.returncode == 1
    assert broken.stderr.startswith("mullvad-allow-k8s: error: ") and broken.stderr.count("\n") == 1
    assert ruleset(ns) == before
    output.write_text(good_file)

    # A bridge table on a kernel without nf_conntrack_bridge: refused before any change.
    bridge = ns.cli("apply", "--settings", str(conf), "--bridge-table", "yes")
    if bridge.returncode == 0:
        pytest.skip("this kernel has nf_conntrack_bridge; the refusal path cannot be shown")
    assert bridge.returncode == 2
    assert "BRIDGE_TABLE: 'yes': this kernel lacks nf_conntrack_bridge" in bridge.stderr
    assert ruleset(ns) == before
    assert output.read_text() == good_file


def test_invalid_settings_change_nothing(
    netns_factory: Callable[[str], Netns], tmp_path: Path
) -> None:
    ns = netns_factory("bad")
    conf = settings_file(tmp_path)
    assert ns.cli("apply", "--settings", str(conf)).returncode == 0
    before, file_before = (
        ruleset(ns),
        (tmp_path / "nftables.d" / "k8s_bypass_mullvad.nft").read_text(),
    )
    bad = ns.cli("apply", "--settings", str(conf), "--service-cidrs", "0.0.0.0/0")
    assert bad.returncode == 2
    assert (
        bad.stderr
        == "mullvad-allow-k8s: error: SERVICE_CIDRS: '0.0.0.0/0': covers the whole address space\n"
    )
    assert ruleset(ns) == before
    assert (tmp_path / "nftables.d" / "k8s_bypass_mullvad.nft").read_text() == file_before


def test_tunnel_address_is_protected_at_load(
    netns_factory: Callable[[str], Netns], tmp_path: Path
) -> None:
    """The tunnel's own address lies in kubeadm's 10.96.0.0/12 here: apply protects it."""
    ns = netns_factory("tun")
    ns.sh(
        "ip link add wg0-mullvad type veth peer name wg0-peer "
        "&& ip addr add 10.99.1.2/32 dev wg0-mullvad "
        "&& ip addr add fc00:bbbb:bbbb:bb01::5:7/128 dev wg0-mullvad "
        "&& ip link set wg0-mullvad up"
    )
    assert ns.cli("apply", "--settings", str(settings_file(tmp_path))).returncode == 0
    text = ruleset(ns)
    v4 = text.split("set protected_v4 {")[1].split("}")[0]
    assert "10.99.1.2" in v4 and "10.64.0.1" in v4
    doctor = ns.cli("doctor", "--settings", str(settings_file(tmp_path)))
    assert "tunnel address 10.99.1.2 lies inside the cluster ranges" in doctor.stdout
