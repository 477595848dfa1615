"""The .rpm installed by name with dnf, with systemd as PID 1.

tests/rpm runs the scriptlets with `rpm --root` in Debian-userland roots without
systemd as PID 1; what a container adds is a booted systemd: the preset enabling the
unit on `dnf install`, the unit loading the table at boot, `systemctl reload`
applying an edited /etc/sysconfig file, `dnf upgrade` replacing the table without
restarting the unit, and `dnf remove` stopping it. dnf installs from a local
repository (createrepo_c) in the container; the image's rpm database knows the
Debian userland through a Provides shim (imagebuild.py), so dependencies are
resolved, not skipped.
"""

from __future__ import annotations

import re

import pytest

from tests.install.conftest import Packages, images
from tests.install.harness import TABLE, UNIT, Box, snapshot_diff
from tests.install.imagelist import Image
from tests.nftmonitor import table_present_after_each

SYSCONFIG = "/etc/sysconfig/mullvad-allow-k8s"
RULESET = "/etc/nftables.d/k8s_bypass_mullvad.nft"
REPO = "/var/tmp/mak-repo"
# --releasever: a Debian userland has no system-release package for dnf to read it from;
# --refresh: the repository changes within a test (upgrade)
DNF = (
    "dnf -y -q --refresh --releasever=1 --setopt=reposdir=/dev/null --nogpgcheck "
    f"--repofrompath=mak,file://{REPO} --repo=mak"
)


def without_dnf(image: Image) -> str | None:
    """Why these dnf flows cannot run in IMAGE, or None."""
    if "tumbleweed" in image.name:
        # zypper installs from a local repository in tests/rpm/test_resolve.py
        return f"{image.name}: these flows drive dnf; openSUSE's zypper is not scripted here"
    return None


pytestmark = pytest.mark.parametrize(
    "container_per_test", images("rpm", systemd=True, unless=without_dnf), indirect=True
)


def edit_pod_cidrs(box: Box, value: str) -> str:
    """Set POD_CIDRS in the settings file; return the new file text."""
    text = box.read(SYSCONFIG)
    assert text is not None and re.search(r"^POD_CIDRS=", text, re.M), text
    edited = re.sub(r"^POD_CIDRS=.*$", f"POD_CIDRS={value}", text, flags=re.M)
    box.write(SYSCONFIG, edited)
    return edited


def publish(box: Box, rpm: object) -> None:
    box.sh(f"mkdir -p {REPO}")
    path = box.copy_in(rpm)  # type: ignore[arg-type]
    box.sh(f"mv {path} {REPO}/ && createrepo_c -q --update {REPO}")


def dnf_install(box: Box, rpms: Packages) -> None:
    publish(box, rpms.old)
    box.sh(f"{DNF} install mullvad-allow-k8s")


def test_dnf_install_enables_the_unit_which_loads_the_table_at_boot_and_on_reload(
    box: Box, rpms: Packages
) -> None:
    dnf_install(box, rpms)

    # the package's preset enables it, %post loads the table and starts the unit
    assert box.sh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert box.unit("ActiveState") == "active"
    box.assert_active()

    first = box.unit("InvocationID")
    box.reboot()
    assert box.unit("InvocationID") != first
    assert box.unit("ActiveState") == "active"
    assert f"loaded {RULESET}" in box.journal()
    box.assert_active()

    edit_pod_cidrs(box, "10.42.0.0/16")
    booted = box.unit("InvocationID")
    with box.monitor() as transactions:
        box.sh(f"systemctl reload {UNIT}")
    assert table_present_after_each(transactions) == [], transactions
    box.assert_active()
    assert "10.42.0.0/16" in (box.read(RULESET) or "")
    assert box.unit("InvocationID") == booted


def test_dnf_upgrade_replaces_the_table_without_restart_or_gap(box: Box, rpms: Packages) -> None:
    dnf_install(box, rpms)
    edited = edit_pod_cidrs(box, "10.42.0.0/16")
    invocation = box.unit("InvocationID")
    publish(box, rpms.new)

    with box.monitor() as transactions:
        box.sh(f"{DNF} upgrade mullvad-allow-k8s")

    version = box.sh("rpm -q --qf '%{VERSION}-%{RELEASE}' mullvad-allow-k8s").stdout
    assert version == rpms.version_new
    assert table_present_after_each(transactions) == [], transactions
    assert any(TABLE in e for t in transactions for e in t), "the upgrade loaded nothing"
    assert box.unit("InvocationID") == invocation, "the upgrade restarted the unit"
    assert box.read(SYSCONFIG) == edited
    assert not box.exists(SYSCONFIG + ".rpmnew")
    box.assert_active()


def test_dnf_remove_stops_the_unit_and_leaves_nothing_behind(box: Box, rpms: Packages) -> None:
    publish(box, rpms.old)
    before, ruleset = box.snapshot(), box.ruleset()
    box.sh(f"{DNF} install mullvad-allow-k8s")
    assert TABLE in box.tables()

    box.sh(f"{DNF} remove mullvad-allow-k8s")

    assert box.unit("LoadState") == "not-found"
    assert box.ruleset() == ruleset
    assert snapshot_diff(before, box.snapshot()) == []
    assert box.sh("systemctl --failed --no-legend --plain").stdout.strip() == ""


OLD_INBOUND = "INBOUND_PORTS=non-ephemeral"


@pytest.mark.parametrize(
    ("edit", "host_ports"),
    [(None, "6443"), ("INBOUND_PORTS=80,443,6443", "80, 443, 6443")],
    ids=["untouched", "explicit-ports"],
)
def test_dnf_upgrade_from_the_released_0_1_0(
    box: Box, rpms_from_0_1_0: Packages, edit: str | None, host_ports: str
) -> None:
    """A 0.1.0 install (its own RPM, built from this repository's history) gets the new
    inbound model: an untouched /etc/sysconfig file is replaced by rpm, an edited one is
    kept and migrated by %post, which says so once."""
    layout = box.sh(
        "python3 -c 'import sys; print(\"/usr/lib/python3/dist-packages\" in sys.path)'"
    )
    if layout.stdout.strip() != "True":
        pytest.skip(
            "0.1.0's RPM used Debian's dist-packages, which this image's Python does not search"
        )
    publish(box, rpms_from_0_1_0.old)
    box.sh(f"{DNF} install mullvad-allow-k8s")
    text = box.read(SYSCONFIG)
    assert text is not None and OLD_INBOUND in text
    if edit:
        box.write(SYSCONFIG, text.replace(OLD_INBOUND, edit))
    publish(box, rpms_from_0_1_0.new)

    with box.monitor() as transactions:  # not -q: dnf then shows what %post says
        upgrade = box.sh(f"{DNF.replace(' -q ', ' ')} upgrade mullvad-allow-k8s")

    version = box.sh("rpm -q --qf '%{VERSION}-%{RELEASE}' mullvad-allow-k8s").stdout
    assert version == rpms_from_0_1_0.version_new
    assert table_present_after_each(transactions) == [], transactions
    after = box.read(SYSCONFIG) or ""
    assert "\nINBOUND_PORTS=" not in after and "\nEPHEMERAL_PORTS=" not in after
    told = upgrade.stdout + upgrade.stderr
    assert told.count("is retired") == (2 if edit else 0), told  # the kept file only
    box.assert_active()
    ports = box.sh("nft list set inet mullvad_allow_k8s host_ports").stdout
    assert f"elements = {{ {host_ports} }}" in ports
