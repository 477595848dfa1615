"""dnf: install by name from the signed repository, upgrade from it, refuse tampering.

No Fedora or openSUSE root can be built here, so dnf is Debian's dnf 4 inside a
Debian-userland root (tests/rpm's System: overlay, own PID 1, network and mount
namespaces; rpm's database at /var/lib/rpm; a Provides helper rpm for what dpkg
installed). The repository is added with the published .repo file and served by
`python3 -m http.server` on 127.0.0.1 in the system's network namespace. dnf runs
inside the root as a user runs it: `dnf install mullvad-allow-k8s`, answering yes to
the key import (the fingerprint it shows is checked here).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.packages import Builds
from tests.repo import tamper
from tests.repo.conftest import DnfSystem, Key, publish, run

SYSCONFIG = "/etc/sysconfig/mullvad-allow-k8s"
NFT_FILE = "/etc/nftables.d/k8s_bypass_mullvad.nft"
TABLE = "inet mullvad_allow_k8s"


def evr(rpm: Path) -> str:
    return run(["rpm", "-qp", "--nosignature", "--qf", "%{VERSION}-%{RELEASE}", rpm]).stdout


def grouped(fingerprint: str) -> str:
    """A fingerprint as dnf shows it: groups of four."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, 40, 4))


def test_install_by_name(dnf_system: DnfSystem, builds: Builds, key: Key) -> None:
    system = dnf_system.system
    dnf_system.add_repository()
    installed = dnf_system.dnf("install mullvad-allow-k8s")

    out = installed.stdout
    assert dnf_system.version() == evr(builds.rpm)
    # The key came from the local file the .repo names (gpgkey), shown with its
    # fingerprint before import; it checked the repository metadata and the package.
    assert f"Fingerprint: {grouped(key.fingerprint)}" in out
    assert "Key imported successfully" in out
    keyid = key.fingerprint[-8:].lower()
    assert system.sh(f"rpm -q gpg-pubkey-{keyid}").returncode == 0
    served = dnf_system.server.requests()
    assert "GET /rpm/repodata/repomd.xml.asc HTTP/1.1 200" in served
    assert f"GET /rpm/packages/{builds.rpm.name} HTTP/1.1 200" in served
    assert system.sh("rpm -q --qf '%{RSAHEADER:pgpsig}' mullvad-allow-k8s").stdout.endswith(
        f"Key ID {key.fingerprint[-16:].lower()}"
    )

    assert f"loaded table {TABLE} from {NFT_FILE}" in out
    assert system.tables() == {TABLE}
    assert system.sh("mullvad-allow-k8s status").returncode == 0
    assert system.unit_enabled()
    assert system.rpm("-V", "mullvad-allow-k8s").stdout == ""


def test_upgrade_is_picked_up_and_keeps_settings_and_table(
    dnf_system: DnfSystem, builds: Builds, key: Key
) -> None:
    system = dnf_system.system
    dnf_system.add_repository()
    dnf_system.dnf("install mullvad-allow-k8s")
    settings = system.path(SYSCONFIG)
    edited = re.sub(
        r"(?m)^PUBLIC_ADDRESSES=.*$", "PUBLIC_ADDRESSES=192.0.2.10", settings.read_text()
    )
    settings.write_text(edited)
    system.sh("mullvad-allow-k8s apply")

    publish(dnf_system.repo, key, rpms=(builds.rpm_upgrade,))
    listed = dnf_system.dnf("--refresh check-update", check=False)
    assert listed.returncode == 100, listed.stdout  # 100: upgrades are available
    assert re.search(
        rf"mullvad-allow-k8s\.noarch\s+{re.escape(evr(builds.rpm_upgrade))}", listed.stdout
    )

    with system.monitor() as transactions:
        upgraded = dnf_system.dnf("upgrade")
    assert dnf_system.version() == evr(builds.rpm_upgrade)
    assert f"GET /rpm/packages/{builds.rpm_upgrade.name} HTTP/1.1 200" in (
        dnf_system.server.requests()
    )
    assert settings.read_text() == edited
    assert not system.path(SYSCONFIG + ".rpmnew").exists()
    assert "192.0.2.10" in (system.table_text() or "")
    assert system.sh("mullvad-allow-k8s status").returncode == 0
    # %post replaced the table in one transaction: it was never missing
    ours = [t for t in transactions if t.touches_table()]
    assert len(ours) == 1 and ours[0].leaves_table_loaded(), transactions
    assert "removed" not in upgraded.stdout
    # both releases stay in the repository
    both = system.sh("dnf --quiet --showduplicates list mullvad-allow-k8s 2>&1").stdout
    assert evr(builds.rpm) in both and evr(builds.rpm_upgrade) in both


def repomd_edited(repo: Path, _: Builds, __: Key, ___: Key) -> None:
    tamper.rpm_repomd_edited(repo)


def unsigned(repo: Path, _: Builds, __: Key, ___: Key) -> None:
    tamper.rpm_unsigned(repo)


def attacker_publishes(repo: Path, builds: Builds, _: Key, attacker: Key) -> None:
    """Someone with write access but not the key publishes a 'newer' release with theirs."""
    publish(repo, attacker, rpms=(builds.rpm_upgrade,))


def primary_edited(repo: Path, _: Builds, __: Key, ___: Key) -> None:
    tamper.rpm_primary_edited(repo)


def package_modified(repo: Path, _: Builds, __: Key, ___: Key) -> None:
    tamper.rpm_package_modified(repo)


def unsigned_package(repo: Path, builds: Builds, key: Key, _: Key) -> None:
    """Correctly signed metadata for an unsigned package: gpgcheck alone must refuse it."""
    (published,) = (repo / "rpm/packages").glob("*.rpm")
    shutil.copy(builds.rpm, published)
    run(["createrepo_c", "--quiet", "--update", repo / "rpm"])
    repomd = repo / "rpm/repodata/repomd.xml"
    key.gpg(
        "--local-user", key.fingerprint, "--armor", "--detach-sign", "-o", f"{repomd}.asc", repomd
    )


GPG_ERROR = r"repomd\.xml GPG signature verification error: Bad GPG signature"
TAMPERING: dict[str, tuple[Callable[[Path, Builds, Key, Key], None], str]] = {
    # name: (tamper, what dnf says)
    "repomd-edited": (repomd_edited, GPG_ERROR),
    "unsigned": (unsigned, r"GPG verification is enabled, but GPG signature is not available"),
    "attacker-key": (attacker_publishes, GPG_ERROR),
    "primary-edited": (primary_edited, r"checksum doesn't match(.|\n)*-primary\.xml\.gz"),
    "package-modified": (package_modified, r"noarch\.rpm: Downloading successful, but checksum"),
    "unsigned-package": (
        unsigned_package,
        r"noarch\.rpm is not signed(.|\n)*Error: GPG check FAILED",
    ),
}


@pytest.mark.parametrize("attack", TAMPERING)
def test_a_tampered_repository_is_refused(
    dnf_system: DnfSystem, builds: Builds, key: Key, attacker_key: Key, attack: str
) -> None:
    change, says = TAMPERING[attack]
    dnf_system.add_repository()  # the user added the genuine .repo before
    change(dnf_system.repo, builds, key, attacker_key)

    installed = dnf_system.dnf("install mullvad-allow-k8s", check=False)
    said = installed.stdout
    errors = [line for line in said.splitlines() if re.search("rror|GPG|atch|sign", line)]
    print(f"{attack}: {' | '.join(errors)}")
    assert installed.returncode != 0, said
    assert re.search(says, said), said
    assert dnf_system.version() == ""
    assert dnf_system.system.tables() == set()
    # Only the key from the local file was ever offered for import, never the attacker's.
    offered = set(re.findall(r"Importing GPG key 0x([0-9A-F]+)", said))
    assert offered == {key.fingerprint[-8:]}, said
