"""The spec's scriptlets, run for real: install, upgrade, bad settings, erase.

Each test installs the built package with rpm into a fresh Debian-userland system
(see harness.py) with its own network namespace, and checks the files, the unit's
enablement (systemctl runs offline there: no systemd as PID 1) and the kernel's tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from mullvad_allow_k8s import __version__
from tests.rpm import harness
from tests.rpm.harness import NFT_FILE, SYSCONFIG, TABLE

SystemFactory = Callable[..., harness.System]
ONE_LINE_ERROR = re.compile(r"^mullvad-allow-k8s: error: POD_CIDRS: '8\.8\.8\.0/24': .+$", re.M)
BAD_SETTING = "POD_CIDRS=8.8.8.0/24"  # not a private range: the generator refuses it


def generated(sys_: harness.System) -> str:
    """What the installed generator makes of the installed settings, right now."""
    return sys_.sh("mullvad-allow-k8s generate").stdout


def test_install_writes_the_file_loads_the_table_enables_the_unit(
    system: SystemFactory, release1: Path
) -> None:
    sys_ = system(live=True)
    proc = sys_.rpm("-i", release1)
    assert f"loaded table {TABLE} from {NFT_FILE}" in proc.stderr
    assert sys_.read(NFT_FILE) == generated(sys_)
    assert sys_.tables() == {TABLE}
    assert sys_.sh("mullvad-allow-k8s status").returncode == 0  # table and file match settings
    assert sys_.unit_enabled()  # the preset file, applied by %systemd_post
    assert "PRESET=" in (sys_.read(SYSCONFIG) or "")
    assert sys_.rpm("-V", "mullvad-allow-k8s").stdout == ""  # nothing differs from the package


def test_upgrade_keeps_edited_settings_and_the_loaded_table(
    system: SystemFactory, release1: Path, release2: Path
) -> None:
    sys_ = system(live=True)
    sys_.rpm("-i", release1)
    sys_.set_setting("PUBLIC_ADDRESSES=192.0.2.10")
    with sys_.monitor() as transactions:
        proc = sys_.rpm("-U", release2)
    assert f"mullvad-allow-k8s-{__version__}-2" in sys_.rpm("-q", "mullvad-allow-k8s").stdout
    assert "PUBLIC_ADDRESSES=192.0.2.10" in (sys_.read(SYSCONFIG) or "")
    assert not sys_.path(SYSCONFIG + ".rpmnew").exists()
    # %post re-applied the kept settings: file and table follow the edit ...
    assert "192.0.2.10" in (sys_.read(NFT_FILE) or "")
    assert "192.0.2.10" in (sys_.table_text() or "")
    assert sys_.sh("mullvad-allow-k8s status").returncode == 0
    # ... in one transaction that replaced the table: never unloaded, no stop/start
    ours = [t for t in transactions if t.touches_table()]
    assert len(ours) == 1, transactions
    assert ours[0].leaves_table_loaded()
    assert "removed" not in proc.stderr
    assert sys_.unit_enabled()


def test_changed_settings_are_applied_by_apply(system: SystemFactory, release1: Path) -> None:
    sys_ = system(live=True)
    sys_.rpm("-i", release1)
    sys_.set_setting("POD_CIDRS=10.42.0.0/16")
    assert sys_.sh("mullvad-allow-k8s status", check=False).returncode == 3  # stale
    sys_.sh("mullvad-allow-k8s apply")
    assert "10.42.0.0/16" in (sys_.table_text() or "")
    assert sys_.read(NFT_FILE) == generated(sys_)
    assert sys_.sh("mullvad-allow-k8s status").returncode == 0


def test_bad_settings_on_upgrade_print_the_error_and_change_nothing(
    system: SystemFactory, release1: Path, release2: Path
) -> None:
    sys_ = system(live=True)
    sys_.rpm("-i", release1)
    file_before, table_before = sys_.read(NFT_FILE), sys_.table_text()
    sys_.set_setting(BAD_SETTING)
    with sys_.monitor() as transactions:
        proc = sys_.rpm("-U", release2)  # exits 0: the transaction is not aborted
    assert ONE_LINE_ERROR.search(proc.stderr), proc.stderr
    assert f"{SYSCONFIG} was not applied" in proc.stderr
    assert f"mullvad-allow-k8s-{__version__}-2" in sys_.rpm("-q", "mullvad-allow-k8s").stdout
    assert sys_.read(NFT_FILE) == file_before
    assert sys_.table_text() == table_before
    assert transactions == []  # nftables was not touched at all


def test_bad_settings_on_first_install(system: SystemFactory, release1: Path) -> None:
    """A settings file provisioned before the package (kept by rpm, .rpmnew beside it)."""
    sys_ = system(live=True)
    sys_.path(SYSCONFIG).parent.mkdir(parents=True, exist_ok=True)
    sys_.path(SYSCONFIG).write_text(BAD_SETTING + "\n")
    proc = sys_.rpm("-i", release1)
    assert ONE_LINE_ERROR.search(proc.stderr), proc.stderr
    assert sys_.read(SYSCONFIG) == BAD_SETTING + "\n"
    assert sys_.path(SYSCONFIG + ".rpmnew").exists()
    assert sys_.read(NFT_FILE) is None
    assert sys_.tables() == set()
    # fixing the file and running apply brings the bypass up
    sys_.path(SYSCONFIG).write_text("POD_CIDRS=10.244.0.0/16\n")
    sys_.sh("mullvad-allow-k8s apply")
    assert sys_.tables() == {TABLE}


def test_erase_deletes_only_our_tables_and_the_generated_file(
    system: SystemFactory, release1: Path
) -> None:
    sys_ = system(live=True)
    sys_.rpm("-i", release1)
    sys_.nft("add table inet mullvad")  # stand-ins for Mullvad's and kube-proxy's tables
    sys_.nft("add table ip kube-proxy")
    sys_.set_setting("PUBLIC_ADDRESSES=192.0.2.10")
    proc = sys_.rpm("-e", "mullvad-allow-k8s")
    assert f"removed {TABLE}" in proc.stderr
    assert sys_.tables() == {"inet mullvad", "ip kube-proxy"}
    assert sys_.read(NFT_FILE) is None
    assert "PUBLIC_ADDRESSES=192.0.2.10" in (sys_.read(SYSCONFIG + ".rpmsave") or "")
    assert not sys_.unit_enabled()
    assert sys_.leftovers() == [SYSCONFIG + ".rpmsave"]


def test_erase_of_unedited_settings_leaves_nothing(system: SystemFactory, release1: Path) -> None:
    sys_ = system(live=True)
    sys_.rpm("-i", release1)
    sys_.rpm("-e", "mullvad-allow-k8s")
    assert sys_.tables() == set()
    assert sys_.leftovers() == []


def test_image_build_writes_the_file_and_touches_no_kernel_table(
    system: SystemFactory, release1: Path
) -> None:
    """rpm --root / dnf --installroot: PID 1 is outside the root being installed."""
    sys_ = system(live=False)
    sys_.nft(f"add table {TABLE}")  # the build host's own bypass must survive
    host_table = sys_.table_text()
    sys_.rpm("-i", release1)
    assert sys_.read(NFT_FILE) == generated(sys_)
    assert sys_.unit_enabled()  # so the image loads the table at first boot
    assert sys_.table_text() == host_table
    sys_.rpm("-e", "mullvad-allow-k8s")
    assert sys_.table_text() == host_table
    assert sys_.read(NFT_FILE) is None


def test_preset_disabled_by_the_site_writes_the_file_only(
    system: SystemFactory, release1: Path
) -> None:
    sys_ = system(live=True)
    site = sys_.path("/etc/systemd/system-preset/00-site.preset")
    site.parent.mkdir(parents=True, exist_ok=True)
    site.write_text("disable mullvad-allow-k8s.service\n")
    proc = sys_.rpm("-i", release1)
    assert "mullvad-allow-k8s.service is disabled (systemd preset)" in proc.stderr
    assert not sys_.unit_enabled()
    assert sys_.read(NFT_FILE) == generated(sys_)
    assert sys_.tables() == set()


def test_without_systemctl_the_scriptlets_still_load_and_remove(
    system: SystemFactory, release1: Path
) -> None:
    """A container or chroot with no systemd at all."""
    sys_ = system(live=True)
    for name in ("usr/bin/systemctl", "bin/systemctl"):
        if sys_.path(name).is_file() and not sys_.path(name).is_symlink():
            sys_.path(name).unlink()
    assert sys_.sh("command -v systemctl", check=False).returncode != 0
    sys_.rpm("-i", release1)
    assert sys_.tables() == {TABLE}
    assert sys_.read(NFT_FILE) == generated(sys_)
    sys_.rpm("-e", "mullvad-allow-k8s")
    assert sys_.tables() == set()
    assert sys_.read(NFT_FILE) is None


def test_upgrade_from_the_released_0_1_0_migrates_an_edited_file_once(
    system: SystemFactory, release_0_1_0: Path, release1: Path
) -> None:
    """0.1.0's own RPM (built from this repository's history; its Debian-layout Python
    paths run in this Debian userland), its settings edited, then `rpm -U` to this one:
    the kept file loses the retired keys, the port list becomes HOST_PORTS, %post says
    so once, and the table is replaced in one transaction."""
    sys_ = system(live=True)
    sys_.rpm("-i", release_0_1_0)
    assert "@inbound_ports" in (sys_.table_text() or "")
    sys_.set_setting("INBOUND_PORTS=80,443,6443")
    with sys_.monitor() as transactions:
        proc = sys_.rpm("-U", release1)
    text = sys_.read(SYSCONFIG) or ""
    assert "\nINBOUND_PORTS=" not in text and "\nEPHEMERAL_PORTS=" not in text
    assert proc.stderr.count("INBOUND_PORTS='80,443,6443' is retired") == 1, proc.stderr
    assert "HOST_PORTS=80,443,6443\n" in (sys_.read(NFT_FILE) or "")
    assert "chain confirm" in (sys_.table_text() or "")
    ours = [t for t in transactions if t.touches_table()]
    assert len(ours) == 1 and ours[0].leaves_table_loaded(), transactions
    assert sys_.sh("mullvad-allow-k8s status").returncode == 0
