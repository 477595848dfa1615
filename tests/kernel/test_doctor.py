"""doctor against a real kernel: it reads Mullvad's table and says what is missing."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Netns

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
        assert "fix: check that `mullvad split-tunnel` works" in result.stdout
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
