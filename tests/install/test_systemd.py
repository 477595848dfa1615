"""The .deb with systemd as PID 1: the unit at boot, with nftables.service, reload, stop.

The lifecycle tests share one booted container per image (pytest-container's
`container` fixture): the package is installed once, and every test leaves the unit
active with the table loaded, as it found it. Upgrade and purge get fresh containers.
tests/deb boots bookworm with systemd-nspawn for install (enabled, active), upgrade
(reloaded, not restarted) and remove; those run here on the other userlands only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.install.conftest import COVERED_BY_TESTS_DEB, Packages, images, report_if_failed
from tests.install.harness import TABLE, UNIT, Box, snapshot_diff
from tests.nftmonitor import table_present_after_each

SETTINGS = "/etc/default/mullvad-allow-k8s"
RULESET = "/etc/nftables.d/k8s_bypass_mullvad.nft"
SENTINEL = "inet mak_sentinel"  # another table, which only nftables.service may delete
WITH_SYSTEMD = images("deb", systemd=True)
WITH_SYSTEMD_NOT_IN_TESTS_DEB = images(
    "deb", systemd=True, without=frozenset(f"{n}-systemd" for n in COVERED_BY_TESTS_DEB)
)


@pytest.fixture(scope="module")
def installed(shared_box: Box, debs: Packages) -> Box:
    shared_box.preseed({"preset": "k3s"})
    shared_box.apt(f"install {shared_box.copy_in(debs.old)}")
    return shared_box


@pytest.fixture
def active(installed: Box, request: pytest.FixtureRequest) -> Iterator[Box]:
    """The shared container, checked to be as the tests leave it: unit active, table loaded."""
    box = installed
    state = box.unit("ActiveState")
    assert state == "active", f"an earlier test left {UNIT} {state}"
    box.assert_active()
    yield box
    report_if_failed(request, box)
    box.sh(f"nft delete table {SENTINEL} 2>/dev/null || true")


def sentinel(box: Box) -> None:
    box.sh(f"nft add table {SENTINEL}")


@pytest.mark.parametrize("container", WITH_SYSTEMD_NOT_IN_TESTS_DEB, indirect=True)
def test_install_enables_and_starts_the_unit(installed: Box) -> None:
    box = installed
    assert box.sh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert box.unit("ActiveState") == "active"
    assert box.unit("Result") == "success"
    box.assert_active()
    assert f"loaded {RULESET}" in box.journal(), box.journal()


@pytest.mark.parametrize("container", WITH_SYSTEMD, indirect=True)
def test_the_unit_loads_the_table_at_boot(active: Box) -> None:
    box = active
    before = box.unit("InvocationID")

    box.reboot()

    assert box.unit("InvocationID") != before
    assert box.unit("ActiveState") == "active"
    box.assert_active()
    # loaded by the unit from the file (apply --from-file), in this boot
    assert f"loaded {RULESET}" in box.journal()
    assert box.sh("systemctl --failed --no-legend --plain").stdout.strip() == ""


@pytest.mark.parametrize("container", WITH_SYSTEMD, indirect=True)
def test_the_table_survives_restart_and_reload_of_nftables(active: Box) -> None:
    box = active
    sentinel(box)
    box.sh("systemctl restart nftables.service")
    assert SENTINEL not in box.tables(), "nftables.service did not flush the ruleset"
    box.assert_active()  # PartOf=nftables.service: stopped and started with it

    invocation = box.unit("InvocationID")
    sentinel(box)
    box.sh("systemctl reload nftables.service")
    assert SENTINEL not in box.tables(), "nftables.service did not flush the ruleset"
    box.assert_active()  # ReloadPropagatedFrom=nftables.service: reloaded after it
    assert box.unit("InvocationID") == invocation


@pytest.mark.parametrize("container", WITH_SYSTEMD, indirect=True)
def test_reload_applies_a_changed_settings_file_without_a_gap(active: Box) -> None:
    box = active
    original = box.read(SETTINGS)
    assert original is not None
    invocation = box.unit("InvocationID")
    box.write(SETTINGS, original.replace("HOST_PORTS=''", "HOST_PORTS=9345"))
    try:
        with box.monitor() as transactions:
            box.sh(f"systemctl reload {UNIT}")

        assert table_present_after_each(transactions) == [], transactions
        assert any(TABLE in e for t in transactions for e in t), "the reload loaded nothing"
        box.assert_active()  # the table and the file follow the new settings
        assert "HOST_PORTS=9345" in (box.read(RULESET) or "")
        assert (
            "elements = { 9345 }" in box.sh("nft list set inet mullvad_allow_k8s host_ports").stdout
        )
        assert box.unit("InvocationID") == invocation  # reloaded, not restarted
    finally:
        box.write(SETTINGS, original)
        box.sh(f"systemctl reload {UNIT}")


@pytest.mark.parametrize("container", WITH_SYSTEMD, indirect=True)
def test_stop_deletes_only_our_table_and_start_loads_it_again(active: Box) -> None:
    box = active
    sentinel(box)

    box.sh(f"systemctl stop {UNIT}")
    assert box.unit("ActiveState") == "inactive"
    assert box.unit("Result") == "success"
    assert TABLE not in box.tables()
    assert SENTINEL in box.tables()

    box.sh(f"systemctl start {UNIT}")
    assert box.unit("ActiveState") == "active"
    box.assert_active()


@pytest.mark.parametrize("container_per_test", WITH_SYSTEMD_NOT_IN_TESTS_DEB, indirect=True)
def test_upgrade_reloads_the_unit_without_restart_or_gap(box: Box, debs: Packages) -> None:
    box.preseed({"preset": "k3s"})
    box.apt(f"install {box.copy_in(debs.old)}")
    invocation = box.unit("InvocationID")
    text = box.read(SETTINGS)
    assert text is not None
    edited = text.replace("HOST_PORTS=''", "HOST_PORTS=6443,30000-32767")
    box.write(SETTINGS, edited)
    new = box.copy_in(debs.new)

    with box.monitor() as transactions:
        box.apt(f"install {new}")

    assert box.dpkg_version() == f"install ok installed {debs.version_new}"
    assert table_present_after_each(transactions) == [], transactions
    assert any(TABLE in e for t in transactions for e in t), "the upgrade loaded nothing"
    assert box.unit("InvocationID") == invocation, "the upgrade restarted the unit"
    assert box.unit("ActiveState") == "active"
    assert box.read(SETTINGS) == edited
    box.assert_active()


@pytest.mark.parametrize("container_per_test", WITH_SYSTEMD, indirect=True)
def test_purge_stops_the_unit_and_leaves_nothing_behind(box: Box, debs: Packages) -> None:
    deb = box.copy_in(debs.old)
    before, ruleset = box.snapshot(), box.ruleset()
    box.apt(f"install {deb}")
    assert box.unit("ActiveState") == "active"

    box.apt("purge mullvad-allow-k8s")

    assert box.unit("LoadState") == "not-found"
    assert box.ruleset() == ruleset
    assert snapshot_diff(before, box.snapshot()) == []
    assert "mullvad-allow-k8s" not in box.debconf_db()
    assert box.sh("systemctl --failed --no-legend --plain").stdout.strip() == ""


FOLLOW_UNIT = "mullvad-allow-k8s-follow.service"
FOLLOW_DROP_IN = f"/etc/systemd/system/{FOLLOW_UNIT}.d/interval.conf"
FAKE_DOCKER = "/usr/local/bin/docker"


@pytest.mark.parametrize("container", WITH_SYSTEMD, indirect=True)
def test_the_hardened_follower_adds_a_cluster_made_later(active: Box) -> None:
    """The follower, in its sandbox, asks `docker` (a script standing in for the CLI)
    and applies kind's network once it appears, writing /etc/nftables.d."""
    from tests.nix.test_runtime import KIND_NETWORK  # noqa: PLC0415

    box = active
    original = box.read(SETTINGS)
    assert original is not None
    kind = f"[ \"$*\" = 'network inspect kind' ] && echo '{KIND_NETWORK}' && exit 0\nexit 1\n"
    try:
        box.write(FAKE_DOCKER, "#!/bin/sh\nexit 1\n")
        box.sh(f"chmod 755 {FAKE_DOCKER}; mkdir -p {FOLLOW_DROP_IN.rsplit('/', 1)[0]}")
        box.write(
            FOLLOW_DROP_IN,
            "[Service]\nExecStart=\nExecStart=/usr/bin/mullvad-allow-k8s follow --interval 1\n",
        )
        box.write(SETTINGS, original + "PRESET=auto\nNODE_NETWORKS=auto\n")
        box.sh(f"systemctl daemon-reload; systemctl reload {UNIT}; systemctl restart {FOLLOW_UNIT}")
        assert box.unit("ActiveState", FOLLOW_UNIT) == "active"
        box.write(FAKE_DOCKER, f"#!/bin/sh\n{kind}")
        listing = ""
        for _ in range(60):
            listing = box.sh(f"nft list table {TABLE}").stdout
            if "172.19.0.0/16" in listing:
                break
            box.sh("sleep 0.5")
        assert '172.19.0.0/16 . "br-0123456789ab"' in listing, box.journal(FOLLOW_UNIT)
        assert "172.19.0.0/16@br-0123456789ab" in (box.read(RULESET) or "")
        assert box.unit("ActiveState", FOLLOW_UNIT) == "active"
    finally:
        box.sh(f"rm -f {FAKE_DOCKER} {FOLLOW_DROP_IN}")
        box.write(SETTINGS, original)
        box.sh(f"systemctl daemon-reload; systemctl stop {FOLLOW_UNIT}; systemctl reload {UNIT}")
