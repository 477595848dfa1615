"""The .deb on Debian userlands without systemd running (a container's usual life).

Each test gets a fresh container (own network namespace, no network) of each image
in images.toml with family deb and no systemd, except those tests/deb covers
(bookworm, see conftest.COVERED_BY_TESTS_DEB). The images have no apt-utils, so
apt does not preconfigure: the config script runs only from postinst, the other
path next to tests/deb's.
"""

from __future__ import annotations

import pytest

from tests.install.conftest import COVERED_BY_TESTS_DEB, Packages, images
from tests.install.harness import TABLE, Box, snapshot_diff
from tests.nftmonitor import table_present_after_each

SETTINGS = "/etc/default/mullvad-allow-k8s"
TEMPLATE = "/usr/share/mullvad-allow-k8s/settings.default"
RULESET = "/etc/nftables.d/k8s_bypass_mullvad.nft"
UNIT_LINK = "/etc/systemd/system/multi-user.target.wants/mullvad-allow-k8s.service"

pytestmark = pytest.mark.parametrize(
    "container_per_test",
    images("deb", systemd=False, without=COVERED_BY_TESTS_DEB),
    indirect=True,
)


def comments(text: str) -> list[str]:
    """Everything of a settings file but its KEY=VALUE lines."""
    return [line for line in text.splitlines() if not line.split("=", 1)[0].isupper()]


def test_preseeded_install_writes_settings_loads_the_table_and_enables_the_unit(
    box: Box, debs: Packages
) -> None:
    nftables_conf = box.digest("/etc/nftables.conf")
    answers = {
        "preset": "k3s",
        "pod_cidrs": "10.42.0.0/16 fd00:10:42::/56",
        "machine_addresses": "192.0.2.10",
        "public_addresses": "203.0.113.7",
    }
    box.preseed(answers)
    box.apt(f"install {box.copy_in(debs.old)}")

    expected = box.settings(
        "--settings=none",
        "--preset=k3s",
        "--pod-cidrs=10.42.0.0/16 fd00:10:42::/56",
        "--machine-addresses=192.0.2.10",
        "--public-addresses=203.0.113.7",
    )
    assert box.settings(f"--settings={SETTINGS}") == expected
    text = box.read(SETTINGS)
    assert text is not None
    template = box.read(TEMPLATE)
    assert template is not None
    assert comments(text) == comments(template), "the documentation in the file was lost"
    assert box.dpkg_version() == f"install ok installed {debs.version_old}"
    # loaded into this container's own network namespace, from those settings
    assert TABLE in box.tables()
    box.assert_active()
    assert "203.0.113.7" in box.ruleset()
    # enabled for boot although systemd is not running here
    assert box.sh(f"readlink {UNIT_LINK}").stdout.strip().endswith("/mullvad-allow-k8s.service")
    assert box.digest("/etc/nftables.conf") == nftables_conf


def test_install_with_defaults(box: Box, debs: Packages) -> None:
    box.apt(f"install {box.copy_in(debs.old)}")

    assert box.settings(f"--settings={SETTINGS}") == box.settings("--settings=none")
    assert box.read(SETTINGS) == box.read(TEMPLATE)
    box.assert_active()
    shown = box.sh("debconf-show mullvad-allow-k8s").stdout
    assert "mullvad-allow-k8s/preset: auto" in shown
    assert "mullvad-allow-k8s/machine_addresses: auto" in shown


def test_reconfigure_interactively_changes_the_file_and_the_table(box: Box, debs: Packages) -> None:
    box.apt(f"install {box.copy_in(debs.old)}")
    templates = box.read("/var/lib/dpkg/info/mullvad-allow-k8s.templates")
    assert templates is not None
    choices = next(
        line.split(":", 1)[1]
        for line in templates.split("Template: mullvad-allow-k8s/preset", 1)[1].splitlines()
        if line.startswith("Choices:")
    )
    k3s = [c.strip() for c in choices.split(",")].index("k3s") + 1
    answers = [
        str(k3s),  # distribution (a numbered menu in the teletype frontend)
        "",  # pod ranges: empty, the preset's
        "",  # service ranges: empty, the preset's
        "",  # node networks: empty, the preset's (k3s: none)
        "auto",  # machine addresses (teletype offers no default: empty means empty)
        "203.0.113.9",  # public addresses
    ]
    # The teletype frontend needs a terminal: script(1) gives it one.
    proc = box.sh(
        "script -qec 'dpkg-reconfigure mullvad-allow-k8s' /dev/null",
        stdin="".join(f"{a}\n" for a in answers),
        env={"DEBIAN_FRONTEND": "teletype"},
    )

    assert "Kubernetes distribution:" in proc.stdout  # it did ask
    assert "Invalid answer" not in proc.stdout
    assert box.settings(f"--settings={SETTINGS}") == box.settings(
        "--settings=none", "--preset=k3s", "--public-addresses=203.0.113.9"
    )
    box.assert_active()
    ruleset = box.ruleset()
    assert "10.42.0.0/16" in ruleset and "10.244.0.0/16" not in ruleset
    assert "203.0.113.9" in ruleset
    shown = box.sh("debconf-show mullvad-allow-k8s").stdout
    assert "mullvad-allow-k8s/preset: k3s" in shown
    assert "mullvad-allow-k8s/public_addresses: 203.0.113.9" in shown


def test_invalid_preseed_fails_the_install_and_changes_nothing(box: Box, debs: Packages) -> None:
    ruleset = box.ruleset()
    box.preseed({"service_cidrs": "10.244.0.0/16"})  # the kubeadm pod range

    proc = box.apt(f"install {box.copy_in(debs.old)}", check=False)

    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "mullvad-allow-k8s: error:" in line]
    assert len(errors) == 1, proc.stderr
    assert "SERVICE_CIDRS" in errors[0] and "10.244.0.0/16" in errors[0]
    assert "nothing was changed" in proc.stderr
    assert not box.exists(SETTINGS)
    assert not box.exists(RULESET)
    assert box.ruleset() == ruleset
    assert not box.dpkg_version().startswith("install ok installed")


def test_invalid_edit_then_reconfigure_fails_and_changes_nothing(box: Box, debs: Packages) -> None:
    box.preseed({"preset": "k3s"})
    box.apt(f"install {box.copy_in(debs.old)}")
    text = box.read(SETTINGS)
    assert text is not None
    box.write(SETTINGS, text.replace("HOST_PORTS=''", "HOST_PORTS=http"))
    before = (box.digest(SETTINGS), box.digest(RULESET), box.ruleset())

    proc = box.sh(
        "dpkg-reconfigure mullvad-allow-k8s",
        check=False,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )

    assert proc.returncode != 0
    assert "HOST_PORTS" in proc.stderr and "http" in proc.stderr
    assert (box.digest(SETTINGS), box.digest(RULESET), box.ruleset()) == before


def test_upgrade_keeps_the_settings_and_the_table_without_a_gap(box: Box, debs: Packages) -> None:
    box.preseed({"preset": "k3s", "public_addresses": "203.0.113.7"})
    box.apt(f"install {box.copy_in(debs.old)}")
    text = box.read(SETTINGS)
    assert text is not None
    edited = text.replace("HOST_PORTS=''", "HOST_PORTS=80,443,6443,30000-32767")
    edited += "# edited by hand\n"
    box.write(SETTINGS, edited)
    new = box.copy_in(debs.new)

    with box.monitor() as transactions:
        box.apt(f"install {new}")

    assert box.dpkg_version() == f"install ok installed {debs.version_new}"
    assert table_present_after_each(transactions) == [], transactions
    assert any(TABLE in event for t in transactions for event in t), "the upgrade loaded nothing"
    assert box.read(SETTINGS) == edited
    box.assert_active()  # regenerated from the edited file
    ports = box.sh("nft list set inet mullvad_allow_k8s host_ports").stdout
    assert "80, 443, 6443, 30000-32767" in ports


def test_remove_then_purge_leave_nothing_behind(box: Box, debs: Packages) -> None:
    deb = box.copy_in(debs.old)
    before, ruleset = box.snapshot(), box.ruleset()
    box.preseed({"preset": "kind"})
    box.apt(f"install {deb}")
    assert TABLE in box.tables()

    box.apt("remove mullvad-allow-k8s")
    assert TABLE not in box.tables()
    assert box.exists(SETTINGS), "remove must keep the settings (purge deletes them)"

    box.apt("purge mullvad-allow-k8s")
    assert box.ruleset() == ruleset
    assert snapshot_diff(before, box.snapshot()) == []
    assert "mullvad-allow-k8s" not in box.debconf_db()


OLD_INBOUND = "INBOUND_PORTS=non-ephemeral"


@pytest.mark.parametrize(
    ("edit", "host_ports"),
    [(None, "6443"), ("INBOUND_PORTS=80,443,6443", "80, 443, 6443")],
    ids=["untouched", "explicit-ports"],
)
def test_upgrade_from_the_released_0_1_0(
    box: Box, debs_from_0_1_0: Packages, edit: str | None, host_ports: str
) -> None:
    """A 0.1.0 install (its own package, built from this repository's history) gets the
    new inbound model on upgrade, keeps an explicit port list, and is told once."""
    box.preseed({"preset": "k3s"})
    box.apt(f"install {box.copy_in(debs_from_0_1_0.old)}")
    text = box.read(SETTINGS)
    assert text is not None and OLD_INBOUND in text
    if edit:
        box.write(SETTINGS, text.replace(OLD_INBOUND, edit))

    with box.monitor() as transactions:
        upgrade = box.apt(f"install {box.copy_in(debs_from_0_1_0.new)}")

    assert box.dpkg_version() == f"install ok installed {debs_from_0_1_0.version_new}"
    assert table_present_after_each(transactions) == [], transactions
    after = box.read(SETTINGS) or ""
    assert "\nINBOUND_PORTS=" not in after and "\nEPHEMERAL_PORTS=" not in after
    told = upgrade.stdout + upgrade.stderr
    assert told.count("INBOUND_PORTS=") == 1 and "is retired" in told, told
    box.assert_active()
    ports = box.sh("nft list set inet mullvad_allow_k8s host_ports").stdout
    assert f"elements = {{ {host_ports} }}" in ports
    assert "chain confirm" in box.sh("nft list table inet mullvad_allow_k8s").stdout
