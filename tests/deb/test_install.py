"""Install, reconfigure, upgrade, remove and purge the .deb in a Debian bookworm root.

Each test has its own overlay of the cached root and its own network namespace
(see conftest.py), so the tables the package loads are real kernel tables that
the host never sees.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mullvad_allow_k8s.settings import render_settings_file
from tests.deb.conftest import Machine, need_tools
from tests.deb.test_source import TEMPLATES, parse_templates
from tests.nftmonitor import table_present_after_each
from tests.packages import UPGRADE_VERSION, Builds

pytestmark = pytest.mark.deb

SETTINGS = "/etc/default/mullvad-allow-k8s"
RULESET = "/etc/nftables.d/k8s_bypass_mullvad.nft"
TABLE = ("inet", "mullvad_allow_k8s")


def with_values(text: str, **values: str) -> str:
    """The settings template with KEY=VALUE lines replaced (as postinst writes them)."""
    lines = text.splitlines(keepends=True)
    for key, value in values.items():
        (index,) = [i for i, line in enumerate(lines) if line.startswith(f"{key}=")]
        lines[index] = f"{key}={value}\n"
    return "".join(lines)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status(machine: Machine) -> str:
    proc = machine.sh("mullvad-allow-k8s status", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_preseeded_install_writes_the_file_and_loads_the_table(
    machine: Machine, builds: Builds
) -> None:
    nftables_conf = digest(machine.file("/etc/nftables.conf"))
    machine.preseed(
        {
            "preset": "k3s",
            "pod_cidrs": "10.42.0.0/16 fd00:10:42::/56",
            "public_addresses": "203.0.113.7",
        }
    )
    proc = machine.apt_install(builds.deb)

    assert machine.file(SETTINGS).read_text() == with_values(
        render_settings_file(),
        PRESET="k3s",
        POD_CIDRS="'10.42.0.0/16 fd00:10:42::/56'",
        PUBLIC_ADDRESSES="203.0.113.7",
    )
    assert f"wrote {SETTINGS}" in proc.stderr
    assert TABLE in machine.tables()
    report = status(machine)
    assert "loaded, matches the settings" in report
    assert f"file {RULESET}: matches the settings" in report
    assert "POD_CIDRS=10.42.0.0/16 fd00:10:42::/56" in machine.file(RULESET).read_text()
    assert digest(machine.file("/etc/nftables.conf")) == nftables_conf


def test_invalid_preseed_fails_cleanly_and_can_be_fixed(machine: Machine, builds: Builds) -> None:
    machine.preseed({"pod_cidrs": "8.8.8.0/24"})
    proc = machine.apt_install(builds.deb, check=False)

    assert proc.returncode != 0
    assert "POD_CIDRS: '8.8.8.0/24': not a private range" in proc.stderr
    assert "nothing was changed" in proc.stderr
    assert not machine.file(SETTINGS).exists()
    assert not machine.file(RULESET).exists()
    assert machine.tables() == set()
    state = machine.sh("dpkg-query -W -f '${Status}' mullvad-allow-k8s").stdout
    assert state != "install ok installed"

    machine.preseed({"pod_cidrs": "10.200.0.0/16"})
    machine.sh("dpkg --configure -a")
    assert "POD_CIDRS=10.200.0.0/16\n" in machine.file(SETTINGS).read_text()
    assert TABLE in machine.tables()


def test_reconfigure_asks_again_after_a_bad_answer_and_changes_the_file(
    machine: Machine, builds: Builds
) -> None:
    machine.apt_install(builds.deb)
    assert "PRESET=auto\n" in machine.file(SETTINGS).read_text()

    choices = parse_templates(TEMPLATES.read_text())["preset"]["Choices"].split(", ")
    answers = [
        str(choices.index("custom") + 1),  # distribution
        "8.8.8.0/24",  # pod ranges: public, rejected
        "10.96.0.0/16",  # service ranges
        "auto",  # node networks
        "auto",  # machine addresses
        "",  # public addresses
        "6443 9345",  # host ports
        "10.200.0.0/16",  # pod ranges, asked again
    ]
    # The teletype frontend wants a controlling terminal (trixie's insists): script(1).
    proc = machine.sh(
        "script --quiet --return --command 'dpkg-reconfigure mullvad-allow-k8s' /dev/null",
        stdin="".join(f"{a}\n" for a in answers),
        env={"DEBIAN_FRONTEND": "teletype", "TERM": "dumb"},
    )

    assert "Invalid answer" in proc.stdout
    assert "not a private range" in proc.stdout
    text = machine.file(SETTINGS).read_text()
    for line in (
        "PRESET=custom",
        "POD_CIDRS=10.200.0.0/16",
        "SERVICE_CIDRS=10.96.0.0/16",
        "HOST_PORTS='6443 9345'",
    ):
        assert f"\n{line}\n" in text
    assert "loaded, matches the settings" in status(machine)
    config = machine.sh("debconf-show mullvad-allow-k8s").stdout
    assert "mullvad-allow-k8s/pod_cidrs: 10.200.0.0/16" in config


def test_noninteractive_reconfigure_with_a_bad_edit_changes_nothing(
    machine: Machine, builds: Builds
) -> None:
    machine.apt_install(builds.deb)
    settings = machine.file(SETTINGS)
    settings.write_text(
        settings.read_text().replace("PUBLIC_ADDRESSES=''", "PUBLIC_ADDRESSES=127.0.0.1")
    )
    before = (
        digest(settings),
        digest(machine.file(RULESET)),
        machine.sh("nft list ruleset").stdout,
    )

    proc = machine.sh("dpkg-reconfigure mullvad-allow-k8s", check=False)

    assert proc.returncode != 0
    assert "PUBLIC_ADDRESSES: '127.0.0.1': a loopback address" in proc.stderr
    after = (digest(settings), digest(machine.file(RULESET)), machine.sh("nft list ruleset").stdout)
    assert after == before


def test_upgrade_keeps_a_manual_edit_and_never_drops_the_table(
    machine: Machine, builds: Builds
) -> None:
    machine.preseed({"preset": "k3s"})
    machine.apt_install(builds.deb)
    settings = machine.file(SETTINGS)
    edited = (
        settings.read_text()
        .replace("HOST_PORTS=''", "HOST_PORTS=80,443,6443,30000-32767")
        .replace("PUBLIC_ADDRESSES=''", 'PUBLIC_ADDRESSES="198.51.100.9"  # our LB')
        # Valid for the generator (shlex), though not for sh: must be read all the same.
        .replace("POD_CIDRS=auto", "POD_CIDRS=10.42.0.0/16 10.142.0.0/16")
        + "# edited by hand\n"
    )
    settings.write_text(edited)

    # Every nftables transaction of the upgrade, recorded by `nft monitor`.
    upgrade = machine.copy_in(builds.deb_upgrade)
    with machine.monitor() as transactions:
        machine.sh(f"dpkg -i {upgrade}")

    assert table_present_after_each(transactions) == [], transactions
    assert any(t.touches_table() for t in transactions), "the upgrade loaded nothing"
    version = machine.sh("dpkg-query -W -f '${Version}' mullvad-allow-k8s").stdout
    assert version == UPGRADE_VERSION
    assert settings.read_text() == edited
    # The upgrade regenerated and loaded the table from the edited file ...
    assert "loaded, matches the settings" in status(machine)
    assert "HOST_PORTS=80,443,6443,30000-32767" in machine.file(RULESET).read_text()
    # ... and debconf now holds the hand-edited answer.
    config = machine.sh("debconf-show mullvad-allow-k8s").stdout
    assert "mullvad-allow-k8s/public_addresses: 198.51.100.9" in config
    assert "mullvad-allow-k8s/pod_cidrs: 10.42.0.0/16 10.142.0.0/16" in config


def test_remove_deletes_the_table_and_purge_leaves_nothing(
    machine: Machine, builds: Builds
) -> None:
    machine.preseed({"preset": "k3s"})
    machine.apt_install(builds.deb)
    assert TABLE in machine.tables()

    settings = machine.file(SETTINGS)
    custom = "/etc/nftables.d/custom.nft"
    settings.write_text(settings.read_text() + f'OUTPUT="{custom}"  # moved\n')
    machine.sh("mullvad-allow-k8s apply")
    assert machine.file(custom).exists()

    machine.sh("apt-get -o Dpkg::Use-Pty=0 remove -y mullvad-allow-k8s")
    assert machine.tables() == set()
    assert settings.exists()  # configuration stays until purge

    machine.sh("apt-get -o Dpkg::Use-Pty=0 purge -y mullvad-allow-k8s")
    assert machine.tables() == set()
    assert not settings.exists()
    assert not machine.file(RULESET).exists()
    assert not machine.file(custom).exists()
    assert not machine.file("/etc/nftables.d").exists()
    assert "mullvad-allow-k8s" not in machine.debconf_db()
    # Nothing of ours left anywhere: only package-manager state and logs changed.
    bookkeeping = ("var/lib/dpkg", "var/lib/apt", "var/cache", "var/log", "tmp", "var/tmp")
    upper = machine.work / "upper"
    leftovers = sorted(
        str(p.relative_to(upper))
        for p in upper.rglob("*")
        if not p.is_dir() and not str(p.relative_to(upper)).startswith(bookkeeping)
    )
    assert leftovers == []


def test_without_cap_net_admin_install_succeeds_and_leaves_loading_to_boot(
    machine: Machine, builds: Builds
) -> None:
    inside = machine.copy_in(builds.deb)
    proc = machine.sh(f"apt-get -o Dpkg::Use-Pty=0 install -y {inside}", mode="nocap")

    assert "no CAP_NET_ADMIN here" in proc.stderr
    assert "mullvad-allow-k8s.service loads it at boot" in proc.stderr
    assert machine.file(SETTINGS).exists()
    assert machine.file(RULESET).read_text().startswith("# Generated by mullvad-allow-k8s")
    assert machine.tables() == set()


def test_in_a_chroot_install_does_not_touch_the_hosts_tables(
    machine: Machine, builds: Builds
) -> None:
    inside = machine.copy_in(builds.deb)
    proc = machine.sh(f"apt-get -o Dpkg::Use-Pty=0 install -y {inside}", mode="chroot")

    assert "running in a chroot" in proc.stderr
    assert machine.file(RULESET).exists()
    assert machine.tables() == set()


def test_with_systemd_the_unit_loads_the_table_reloads_on_upgrade_and_stops_on_remove(
    machine: Machine, builds: Builds
) -> None:
    need_tools("systemd-nspawn", "nsenter")
    machine.boot()
    unit = "mullvad-allow-k8s.service"

    def show(prop: str) -> str:
        return machine.sh(f"systemctl show --property={prop} --value {unit}").stdout.strip()

    machine.preseed({"preset": "k3s"})
    machine.apt_install(builds.deb)
    assert machine.sh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
    assert show("ActiveState") == "active"
    assert "loaded, matches the settings" in status(machine)
    started = show("InvocationID")

    settings = machine.file(SETTINGS)
    settings.write_text(settings.read_text().replace("HOST_PORTS=''", "HOST_PORTS=9345"))
    upgrade = machine.copy_in(builds.deb_upgrade)
    with machine.monitor() as transactions:
        machine.sh(f"dpkg -i {upgrade}")

    assert table_present_after_each(transactions) == [], transactions
    assert any(t.touches_table() for t in transactions), "the upgrade loaded nothing"
    # Not restarted (same invocation), but reloaded: the table follows the edited file.
    assert show("InvocationID") == started
    assert show("ActiveState") == "active"
    assert "loaded, matches the settings" in status(machine)
    assert "HOST_PORTS=9345\n" in machine.file(RULESET).read_text()

    machine.sh("apt-get -o Dpkg::Use-Pty=0 remove -y mullvad-allow-k8s")
    assert show("ActiveState") == "inactive"
    assert machine.tables() == set()
    machine.sh("apt-get -o Dpkg::Use-Pty=0 purge -y mullvad-allow-k8s")
    assert not machine.file(f"/etc/systemd/system/multi-user.target.wants/{unit}").exists()


def test_when_policy_rc_d_forbids_starting_services_nothing_is_loaded(
    machine: Machine, builds: Builds
) -> None:
    policy = machine.file("/usr/sbin/policy-rc.d")
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    proc = machine.apt_install(builds.deb)

    assert "policy-rc.d forbids starting services" in proc.stderr
    assert machine.file(RULESET).exists()
    assert machine.tables() == set()


def test_keys_missing_from_an_older_file_are_added_with_their_documentation(
    machine: Machine, builds: Builds
) -> None:
    machine.apt_install(builds.deb)
    settings = machine.file(SETTINGS)
    full = settings.read_text()
    # The last key's block (comments and line), as if the file predated that key.
    blocks = full.split("\n\n")
    older = "\n\n".join(blocks[:-1]) + "\n"
    settings.write_text(older)

    machine.sh("dpkg-reconfigure mullvad-allow-k8s")

    assert settings.read_text() == older + "\n" + blocks[-1]


OLD_DEFAULT = Path(__file__).resolve().parents[1] / "data" / "settings-0.1.0.default"


@pytest.mark.parametrize(
    ("inbound", "host_ports"),
    [("non-ephemeral", "6443"), ("'80,443,6443'", "80,443,6443")],
    ids=["old-default", "explicit-list"],
)
def test_a_0_1_0_settings_file_is_migrated_once_by_postinst(
    machine: Machine, builds: Builds, inbound: str, host_ports: str
) -> None:
    """The file a 0.1.0 install left (its shipped default, captured from 0.1.0's
    `settings --defaults`), with INBOUND_PORTS as the user had it."""
    settings = machine.file(SETTINGS)
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(
        OLD_DEFAULT.read_text().replace("INBOUND_PORTS=non-ephemeral", f"INBOUND_PORTS={inbound}")
    )

    proc = machine.apt_install(builds.deb)

    text = settings.read_text()
    assert "\nINBOUND_PORTS=" not in text and "\nEPHEMERAL_PORTS=" not in text
    assert proc.stderr.count("INBOUND_PORTS=") == 1, proc.stderr  # told once
    assert "is retired" in proc.stderr
    assert f"HOST_PORTS={host_ports}\n" in machine.file(RULESET).read_text()
    assert TABLE in machine.tables()
    assert "loaded, matches the settings" in status(machine)
    # Told once: a reconfigure finds nothing to migrate and keeps the ports.
    again = machine.sh("dpkg-reconfigure mullvad-allow-k8s")
    assert "retired" not in again.stderr
    assert settings.read_text() == text


@pytest.mark.parametrize(
    ("edit", "host_ports"),
    [(None, "6443"), ("INBOUND_PORTS=80,443,6443,30000-32767", "80,443,6443,30000-32767")],
    ids=["untouched", "explicit-ports"],
)
def test_upgrade_from_the_0_1_0_package_gets_the_new_model_and_says_so_once(
    machine: Machine, builds: Builds, edit: str | None, host_ports: str
) -> None:
    machine.preseed({"preset": "k3s"})
    machine.apt_install(builds.deb_0_1_0)
    settings = machine.file(SETTINGS)
    assert "INBOUND_PORTS=non-ephemeral" in settings.read_text()
    old_table = machine.sh("nft list table inet mullvad_allow_k8s").stdout
    assert "@inbound_ports" in old_table and "chain confirm" not in old_table
    if edit:
        settings.write_text(settings.read_text().replace("INBOUND_PORTS=non-ephemeral", edit))

    with machine.monitor() as transactions:
        proc = machine.apt_install(builds.deb)

    # The old table is replaced by the new one in one transaction: never missing.
    assert table_present_after_each(transactions) == [], transactions

    text = settings.read_text()
    assert "\nINBOUND_PORTS=" not in text and "\nEPHEMERAL_PORTS=" not in text
    assert proc.stderr.count("INBOUND_PORTS=") == 1, proc.stderr  # told once, by postinst
    assert f"HOST_PORTS={host_ports}\n" in machine.file(RULESET).read_text()
    table = machine.sh("nft list table inet mullvad_allow_k8s").stdout
    assert "chain confirm" in table and "@inbound_ports" not in table
    assert "loaded, matches the settings" in status(machine)
    assert "mullvad-allow-k8s/host_ports:" in machine.sh("debconf-show mullvad-allow-k8s").stdout
    # The changelog's NEWS entry is what apt-listchanges shows on this upgrade.
    news = machine.file("/usr/share/doc/mullvad-allow-k8s/NEWS.Debian.gz")
    assert news.exists()
    again = machine.sh("dpkg-reconfigure mullvad-allow-k8s")
    assert "retired" not in again.stderr and settings.read_text() == text


FOLLOW_LINK = "/etc/systemd/system/multi-user.target.wants/mullvad-allow-k8s-follow.service"


def test_upgrade_from_0_2_0_keeps_every_setting_and_adds_node_networks(
    machine: Machine, builds: Builds
) -> None:
    """0.2.0 as users have it (its defaults: PRESET=kubeadm, ranges empty = the preset's):
    the upgrade changes no value, appends NODE_NETWORKS (auto, which finds nothing for
    kubeadm), keeps the table loaded throughout, and enables the follower."""
    machine.apt_install(builds.deb_0_2_0)
    settings = machine.file(SETTINGS)
    before = settings.read_text()
    assert "\nPRESET=kubeadm\n" in before and "NODE_NETWORKS" not in before
    old = machine.file(RULESET).read_text()
    assert "mullvad-allow-k8s 0.2.0" in old

    with machine.monitor() as transactions:
        machine.apt_install(builds.deb)

    assert table_present_after_each(transactions) == [], transactions
    text = settings.read_text()
    assert text.startswith(before), "a 0.2.0 setting or comment changed"
    added = text[len(before) :]
    assert "\nNODE_NETWORKS=auto\n" in added and added.count("=") == 1
    new = machine.file(RULESET).read_text()
    for line in ("PRESET=kubeadm", "POD_CIDRS=10.244.0.0/16", "SERVICE_CIDRS=10.96.0.0/12"):
        assert f"#   {line}\n" in old and f"#   {line}\n" in new, line
    assert "#   NODE_NETWORKS=none\n" in new and "set node_v4" not in new
    assert "loaded, matches the settings" in status(machine)
    assert machine.file(FOLLOW_LINK).is_symlink()
    shown = machine.sh("debconf-show mullvad-allow-k8s").stdout
    assert "mullvad-allow-k8s/preset: kubeadm" in shown
    assert "mullvad-allow-k8s/node_networks: auto" in shown
