"""doctor against a real kernel: it reads Mullvad's table and says what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import rootview
from tests.conftest import CLI, ROOT, Netns
from tests.netlab import mullvad_emu
from tests.netlab.mullvad_emu import MullvadState

pytestmark = pytest.mark.kernel


def mullvad_table(split_tunnel: bool) -> str:
    """Mullvad's chain layout; the ct-mark accept rules exist only with split tunnelling."""
    accept = "ct mark 0x00000f41 accept" if split_tunnel else ""
    return f"""
table inet mullvad {{
  chain input {{ type filter hook input priority 0; policy drop;
    iif "lo" accept
    {accept}
  }}
  chain output {{ type filter hook output priority 0; policy drop;
    oif "lo" accept
    {accept}
    udp dport 53 reject
  }}
  chain forward {{ type filter hook forward priority 0; policy drop;
    {accept}
    udp dport 53 reject
    reject
  }}
}}
"""


@pytest.mark.parametrize("split_tunnel", [True, False])
def test_doctor_reads_mullvads_split_tunnel_rules(
    netns_factory: Callable[[str], Netns], split_tunnel: bool
) -> None:
    ns = netns_factory("doc")
    ns.sh(f"nft -f - <<'EOF'\n{mullvad_table(split_tunnel)}\nEOF")
    result = ns.cli("doctor", "--settings", "none")
    if split_tunnel:
        for chain in ("input", "output", "forward"):
            assert f"[ok] Mullvad's {chain} chain accepts ct mark 0x00000f41" in result.stdout
        assert "[error]" not in result.stdout, result.stdout
        assert result.returncode == 0
    else:
        assert "[error] Mullvad's chains have no `ct mark 0x00000f41 accept` rules: split " in (
            result.stdout
        )
        assert "Mount it (`sudo mkdir -p /sys/fs/cgroup/net_cls" in result.stdout
        assert result.returncode == 3


def test_doctor_without_mullvad_says_nothing_blocks(netns_factory: Callable[[str], Netns]) -> None:
    ns = netns_factory("doc")
    result = ns.cli("doctor", "--settings", "none")
    assert "[warning] Mullvad's firewall table (inet mullvad) is not loaded" in result.stdout
    assert "tunnel interface wg0-mullvad does not exist" in result.stdout
    assert "[ok] the kernel accepts the generated ruleset" in result.stdout


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_non_root_users_can_check(netns_factory: Callable[[str], Netns]) -> None:
    """A user without CAP_NET_ADMIN checks in a private user+network namespace."""
    netns_factory("nobody")  # skips unless root (we need root to become nobody)
    # A copy the unprivileged user can read, wherever the checkout lives.
    public = Path(tempfile.mkdtemp(prefix="mak-src-"))
    public.chmod(0o755)
    shutil.copytree(ROOT / "src" / "mullvad_allow_k8s", public / "mullvad_allow_k8s")
    for path in [public, *public.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-m",
            "mullvad_allow_k8s",
            "generate",
            "--settings",
            "none",
            "--check",
            "--preset",
            "k3s",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(public)},
    )
    shutil.rmtree(public)
    assert result.returncode == 0, result.stderr
    assert "table inet mullvad_allow_k8s {" in result.stdout


# Shapes of the Mullvad CLI's answers: mullvad-cli src/cmds/version.rs and status.rs
# (mullvadvpn-app 2025.x): `{:22}: {}` lines, and the tunnel state on the first line.
MULLVAD_VERSION = "Current version       : 2025.14\nIs supported          : true\n"
MULLVAD_STATUS = "Connected\n    Relay: se-got-wg-001\n"


@pytest.mark.parametrize(
    ("state", "cli", "expected"),
    [
        (
            MullvadState("connected", allow_lan=False),
            True,
            "connected (or connecting); split tunnel by net_cls (cgroup v1, classid 0x4d9f41); "
            "local network sharing off; wg0-mullvad addresses: 10.64.7.9",
        ),
        (
            MullvadState("blocked", allow_lan=True),
            False,
            "blocked; split tunnel by net_cls (cgroup v1, classid 0x4d9f41); local network "
            "sharing on; wg0-mullvad addresses: 10.64.7.9",
        ),
        (
            MullvadState("connected", allow_lan=False, split=False),
            False,
            "connected (or connecting); no split-tunnel rules; local network sharing off",
        ),
    ],
    ids=["connected-cli", "blocked-lan", "no-split"],
)
def test_doctor_says_mullvads_state_in_words(
    netns_factory: Callable[[str], Netns],
    tmp_path: Path,
    state: MullvadState,
    cli: bool,
    expected: str,
) -> None:
    """The emulated Mullvad table (tests/netlab/mullvad_emu) in each state, a tunnel with an
    address, and where asked a `mullvad` CLI where root finds it (tests.rootview)."""
    ns = netns_factory("docst")
    tun = mullvad_emu.TUNNEL
    ns.sh(f"ip link add {tun} type veth peer name wgpeer && ip link set {tun} up")
    ns.sh(f"ip addr add 10.64.7.9/32 dev {tun}")
    tunnel = mullvad_emu.Tunnel(ips=("10.64.7.9",), dns=("10.64.0.1",), relay="192.0.2.7")
    ns.sh(f"nft -f - <<'EOF'\n{mullvad_emu.ruleset(state, tunnel)}\nEOF")
    scripts = {}
    if cli:
        scripts["mullvad"] = (
            f'case "$1" in version) printf %s "{MULLVAD_VERSION}";; '
            f'status) printf %s "{MULLVAD_STATUS}";; *) exit 2;; esac\n'
        )
    wrap = rootview.prefix(rootview.fake_programs(tmp_path / "bin", scripts)) if cli else []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = ["ip", "netns", "exec", ns.name, *wrap, *CLI, "doctor", "--settings", "none"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert f"[ok] Mullvad's firewall: {expected}" in result.stdout, result.stdout
    if cli:
        assert "[ok] Mullvad 2025.14: Connected" in result.stdout, result.stdout
    else:
        assert "Mullvad 2025" not in result.stdout
    if not state.split:
        assert "sudo mount -t cgroup -o net_cls" in result.stdout
