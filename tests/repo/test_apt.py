"""apt: install by name from the signed repository, upgrade from it, refuse tampering.

Each test runs in a fresh overlay of a cached Debian root (bookworm, trixie, sid) with
its own network namespace, where `python3 -m http.server` serves a copy of the
published repository on 127.0.0.1 and the table the package loads is a real kernel
table that the host never sees. apt there knows only our repository, added with the
published .sources file, exactly as a user adds it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deb.conftest import Machine
from tests.nftmonitor import table_present_after_each
from tests.packages import Builds
from tests.repo import tamper
from tests.repo.conftest import AptSystem, Key, publish, run

SETTINGS = "/etc/default/mullvad-allow-k8s"
RULESET = "/etc/nftables.d/k8s_bypass_mullvad.nft"
TABLE = ("inet", "mullvad_allow_k8s")
DEB = "pool/main/m/mullvad-allow-k8s"


def deb_version(deb: Path) -> str:
    return run(["dpkg-deb", "--field", deb, "Version"]).stdout.strip()


def problems(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """apt's warnings and errors (W:, E:, and the notices N:)."""
    out = proc.stdout + proc.stderr
    return [line for line in out.splitlines() if re.match(r"^[WEN]: ", line)]


def update(system: AptSystem) -> subprocess.CompletedProcess[str]:
    return system.apt("update", check=False)


def status(machine: Machine) -> str:
    proc = machine.sh("mullvad-allow-k8s status", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_install_by_name(apt_system: AptSystem, builds: Builds, suite: str) -> None:
    machine = apt_system.machine
    apt_system.add_repository()
    updated = update(apt_system)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert problems(updated) == []  # signed by the key in the .sources file: no warnings
    machine.preseed({"preset": "k3s", "pod_cidrs": "10.42.0.0/16"})

    installed = apt_system.apt("install -y mullvad-allow-k8s")

    version = deb_version(builds.deb)
    assert apt_system.version() == f"ii {version}"
    assert f"GET /apt/{DEB}/{builds.deb.name} HTTP/1.1 200" in (apt_system.server.requests())
    assert "wrote /etc/default/mullvad-allow-k8s" in installed.stderr
    settings = machine.file(SETTINGS).read_text()
    assert "\nPRESET=k3s\n" in settings and "\nPOD_CIDRS=10.42.0.0/16\n" in settings
    assert TABLE in machine.tables()
    assert "loaded, matches the settings" in status(machine)
    policy = machine.sh("apt-cache policy mullvad-allow-k8s").stdout
    assert "http://127.0.0.1:8000/apt stable/main all Packages" in policy


def test_upgrade_is_picked_up_and_keeps_settings_and_table(
    apt_system: AptSystem, builds: Builds, key: Key, suite: str
) -> None:
    machine = apt_system.machine
    apt_system.add_repository()
    update(apt_system)
    machine.preseed({"preset": "k3s"})
    apt_system.apt("install -y mullvad-allow-k8s")
    settings = machine.file(SETTINGS)
    edited = settings.read_text().replace(
        "PUBLIC_ADDRESSES=''", "PUBLIC_ADDRESSES=198.51.100.9  # our load balancer"
    )
    settings.write_text(edited)
    machine.sh("mullvad-allow-k8s apply")

    # The maintainer publishes the next version into the same repository.
    publish(apt_system.repo, key, debs=(builds.deb_upgrade,))
    new = deb_version(builds.deb_upgrade)

    updated = update(apt_system)
    assert updated.returncode == 0 and problems(updated) == [], updated.stdout + updated.stderr
    upgradable = machine.sh("apt list --upgradable 2>/dev/null").stdout
    assert f"mullvad-allow-k8s/stable {new} all [upgradable from: {deb_version(builds.deb)}]" in (
        upgradable
    )

    # Every nftables transaction of the upgrade, recorded by `nft monitor`.
    with machine.monitor() as transactions:
        apt_system.apt("upgrade -y")

    assert apt_system.version() == f"ii {new}"
    assert f"GET /apt/{DEB}/{builds.deb_upgrade.name} HTTP/1.1 200" in (
        apt_system.server.requests()
    )
    assert settings.read_text() == edited
    assert table_present_after_each(transactions) == [], transactions
    assert any(t.touches_table() for t in transactions), "the upgrade loaded nothing"
    assert TABLE in machine.tables()
    assert "loaded, matches the settings" in status(machine)
    assert "PUBLIC_ADDRESSES=198.51.100.9" in machine.file(RULESET).read_text()
    # Both versions stay in the repository (a downgrade remains possible).
    madison = machine.sh("apt-cache madison mullvad-allow-k8s").stdout
    assert len(madison.strip().splitlines()) == 2, madison


# What apt prints when it refuses, with gpgv (bookworm) or sqv (trixie, sid).
HASH_MISMATCH = r"Hash Sum mismatch|File has unexpected size"
NOT_SIGNED = r"The repository '[^']*' is not signed"
BAD_SIGNATURE = r"BADSIG|Message has been manipulated"
UNKNOWN_KEY = r"NO_PUBKEY|Missing key [0-9A-F]{40}"


def packages_edited(repo: Path, _: Builds, __: Key) -> None:
    tamper.apt_packages_edited(repo)


def inrelease_edited(repo: Path, _: Builds, __: Key) -> None:
    tamper.apt_inrelease_edited(repo)


def unsigned(repo: Path, _: Builds, __: Key) -> None:
    tamper.apt_unsigned(repo)


def attacker_publishes(repo: Path, builds: Builds, attacker: Key) -> None:
    """Someone with write access but not the key signs a 'newer' package with theirs."""
    publish(repo, attacker, debs=(builds.deb_upgrade,))


def deb_replaced(repo: Path, builds: Builds, _: Key) -> None:
    tamper.apt_deb_replaced(repo, builds.deb_upgrade)


TAMPERING: dict[str, tuple[Callable[[Path, Builds, Key], None], str, str]] = {
    # name: (tamper, what `apt-get update` says (None: update succeeds), what install says)
    "packages-edited": (packages_edited, HASH_MISMATCH, "Unable to locate package"),
    "inrelease-edited": (inrelease_edited, BAD_SIGNATURE, "Unable to locate package"),
    "unsigned": (unsigned, NOT_SIGNED, "Unable to locate package"),
    "attacker-key": (attacker_publishes, UNKNOWN_KEY, "Unable to locate package"),
    "deb-replaced": (deb_replaced, "", HASH_MISMATCH),
}


@pytest.mark.parametrize("attack", TAMPERING)
def test_a_tampered_repository_is_refused(
    apt_system: AptSystem, builds: Builds, attacker_key: Key, attack: str, suite: str
) -> None:
    change, update_says, install_says = TAMPERING[attack]
    apt_system.add_repository()  # the user added the genuine .sources before
    change(apt_system.repo, builds, attacker_key)

    updated = update(apt_system)
    said = updated.stdout + updated.stderr
    if update_says:
        assert updated.returncode != 0, said
        assert re.search(update_says, said), said
    else:
        assert updated.returncode == 0 and problems(updated) == [], said
    if attack == "attacker-key":  # NO_PUBKEY names the long key id, sqv the fingerprint
        assert attacker_key.fingerprint[-16:] in said, said
    installed = apt_system.apt("install -y mullvad-allow-k8s", check=False)
    said = installed.stdout + installed.stderr
    print(f"{suite} {attack}: {' | '.join(problems(updated) + problems(installed))}")
    assert installed.returncode != 0, said
    assert re.search(install_says, said), said
    assert apt_system.version() in ("", "un ")  # not installed
    assert apt_system.machine.tables() == set()
