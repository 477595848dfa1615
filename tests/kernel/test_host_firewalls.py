"""doctor against the host firewalls people run (issue 24): Debian's real ufw and
firewalld, and a hand-written nftables input chain, each in a network namespace.

ufw and firewalld write their configuration under /etc and talk over D-Bus, so each runs
in a private mount namespace over a copy of its /etc directory and a fresh /run (a
private D-Bus system bus for firewalld); their rules land in the test's network
namespace only. doctor runs in the same shell while the firewall is up (firewalld
removes its rules when it exits).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLI, ROOT, Netns

pytestmark = pytest.mark.kernel

DOCTOR = " ".join([*CLI, "doctor", "--settings", "none", "--preset", "kubeadm"])
ENV = f"PYTHONPATH={ROOT / 'src'}"


def need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.fail(f"needs {', '.join(missing)} (.ci/apt/firewalls.txt: ufw, firewalld)")


def in_private_etc(ns: Netns, tmp_path: Path, etc: str, script: str) -> str:
    """`script` in the namespace with a writable copy of /etc/<etc> and a fresh /run."""
    copy = tmp_path / etc
    shutil.copytree(f"/etc/{etc}", copy, symlinks=True)
    inner = f"mount --bind {copy} /etc/{etc}; mount -t tmpfs tmpfs /run; {script}"
    quoted = inner.replace("'", "'\\''")
    result = ns.sh(f"unshare -m --propagation private sh -c '{quoted}'", check=False)
    return result.stdout + result.stderr


def ufw(ns: Netns, tmp_path: Path, *allow: str) -> str:
    rules = "; ".join(f"ufw allow {a} >/dev/null" for a in allow)
    return in_private_etc(
        ns, tmp_path, "ufw", f"ufw --force enable >/dev/null; {rules or 'true'}; {ENV} {DOCTOR}"
    )


def firewalld(ns: Netns, tmp_path: Path, *ports: str) -> str:
    add = " ".join(f"--add-port={p}" for p in ports)
    return in_private_etc(
        ns,
        tmp_path,
        "firewalld",
        "mkdir -p /run/dbus && dbus-daemon --system --fork && "
        "(firewalld --nofork --nopid >/dev/null 2>&1 &) && "
        "for i in $(seq 1 60); do firewall-cmd --state >/dev/null 2>&1 && break; sleep 0.5; done; "
        f"firewall-cmd --state; {'firewall-cmd ' + add + ' >/dev/null;' if add else ''} "
        f"{ENV} {DOCTOR}; kill $(pidof -x firewalld) 2>/dev/null; true",
    )


def test_ufw_closed_then_opened(netns_factory: Callable[[str], Netns], tmp_path: Path) -> None:
    need("ufw", "iptables-nft")
    out = ufw(netns_factory("ufw"), tmp_path / "a")
    assert "[warning] ufw's input filter drops TCP 6443 (HOST_PORTS)" in out, out
    assert "fix: sudo ufw allow 6443/tcp" in out
    assert "[warning] ufw's input filter drops TCP 30000-32767 (NodePorts)" in out
    assert "fix: sudo ufw allow 30000:32767/tcp" in out
    opened = ufw(netns_factory("ufw"), tmp_path / "b", "6443/tcp", "30000:32767/tcp")
    assert "[ok] no other input filter drops HOST_PORTS or the NodePort range" in opened, opened
    assert "ufw's input filter drops" not in opened


def test_firewalld_closed_then_opened(
    netns_factory: Callable[[str], Netns], tmp_path: Path
) -> None:
    need("firewalld", "firewall-cmd", "dbus-daemon")
    out = firewalld(netns_factory("fwd"), tmp_path / "a")
    assert out.startswith("running"), out
    assert "[warning] firewalld's input filter drops TCP 6443 (HOST_PORTS)" in out, out
    assert (
        "fix: sudo firewall-cmd --permanent --add-port=30000-32767/tcp && sudo firewall-cmd "
        "--reload" in out
    )
    opened = firewalld(netns_factory("fwd"), tmp_path / "b", "6443/tcp", "30000-32767/tcp")
    assert "[ok] no other input filter drops HOST_PORTS or the NodePort range" in opened, opened


@pytest.mark.parametrize("policy", ["drop", "accept"])
def test_a_plain_nftables_input_policy(netns_factory: Callable[[str], Netns], policy: str) -> None:
    ns = netns_factory("nftfw")
    ns.sh(
        "nft -f - <<'EOF'\ntable inet filter {\n chain input {\n"
        f"  type filter hook input priority 0; policy {policy};\n"
        "  ct state established,related accept\n  tcp dport { 22, 6443 } accept\n }\n}\nEOF"
    )
    out = ns.sh(f"{ENV} {DOCTOR}", check=False).stdout
    if policy == "accept":
        assert "[ok] no other input filter drops HOST_PORTS" in out, out
        return
    assert "drops TCP 6443" not in out, out  # accepted through the set
    assert "[warning] nftables's input filter drops TCP 30000-32767 (NodePorts)" in out, out
    assert "fix: sudo nft insert rule inet filter input tcp dport 30000-32767 accept" in out
