"""The generator's commands on the lab machine: doctor, status, remove, re-apply.

These run `mullvad-allow-k8s` inside the emulated machine, next to Mullvad's table and
kube-proxy's, as the packages do.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .mullvad_emu import MullvadState
from .scenarios import run_generator
from .topology import Lab


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    st: MullvadState = getattr(request, "param", MullvadState("connected", True, True))
    lab = Lab(st)
    try:
        lab.build()
        yield lab
    finally:
        assert lab.destroy() == []


def nft_list(lab: Lab, *what: str) -> str:
    return lab["host"].exec("nft", "list", *what).stdout


def table_rules(lab: Lab, table: str) -> str:
    """A table without counter values (iptables-nft rules carry counters; traffic moves them)."""
    return lab["host"].exec("nft", "-s", "list", "table", *table.split()).stdout


@pytest.mark.parametrize(
    "lab",
    [MullvadState("connected", True, True), MullvadState("connected", True, False)],
    ids=["split_available", "split_unavailable"],
    indirect=True,
)
def test_doctor_says_whether_split_tunnelling_is_available(lab: Lab) -> None:
    run_generator(lab, "apply")
    doctor = run_generator(lab, "doctor", check=False)
    said = doctor.stdout + doctor.stderr
    if lab.mullvad.split:
        assert doctor.returncode == 0, said
        assert "unavailable" not in said
    else:
        assert doctor.returncode != 0, said
        assert "split tunnelling is unavailable" in said


def test_status_after_apply_is_clean(lab: Lab) -> None:
    run_generator(lab, "apply")
    status = run_generator(lab, "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr


def test_reapply_is_idempotent(lab: Lab) -> None:
    run_generator(lab, "apply")
    first = nft_list(lab, "table", "inet", "mullvad_allow_k8s")
    run_generator(lab, "apply")
    assert nft_list(lab, "table", "inet", "mullvad_allow_k8s") == first


# Where kube-proxy's rules live in each mode (iptables-nft: `ip nat` with portmap's too).
KUBE_PROXY_TABLES = {
    "iptables": ("ip nat", "ip6 nat", "ip filter", "ip6 filter"),
    "nftables": ("ip kube-proxy", "ip6 kube-proxy", "ip nat", "ip6 nat"),
}


@pytest.mark.parametrize("mode", KUBE_PROXY_TABLES)
def test_remove_touches_only_our_table(mode: str) -> None:
    lab = Lab(MullvadState("connected", True, True), kube_proxy=mode)
    try:
        lab.build()
        tables = ("inet mullvad", "ip netlab_cni", *KUBE_PROXY_TABLES[mode])
        before = {t: table_rules(lab, t) for t in tables}
        run_generator(lab, "apply")
        assert "table inet mullvad_allow_k8s" in nft_list(lab, "tables")
        run_generator(lab, "remove")
        assert "mullvad_allow_k8s" not in nft_list(lab, "tables")
        assert {t: table_rules(lab, t) for t in tables} == before
    finally:
        assert lab.destroy() == []
