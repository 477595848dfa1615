"""The spec builds on Debian with rpmbuild, %check runs the unit tests, rpmlint is clean."""

from __future__ import annotations

import hashlib
import re
import tomllib

from mullvad_allow_k8s.settings import SCHEMA, render_settings_file
from tests.rpm import harness


def query(rpm: object, fmt: str) -> list[str]:
    return harness.run(["rpm", "-qp", "--qf", fmt, str(rpm)]).stdout.splitlines()


def test_spec_builds_and_check_runs_the_unit_tests(release1: harness.Build) -> None:
    assert release1.rpm.name == "mullvad-allow-k8s-0.1.0-1.noarch.rpm"
    assert query(release1.rpm, "%{ARCH}\n") == ["noarch"]
    # %check ran pytest on tests/unit against the installed build root
    assert re.search(r"Executing\(%check\)", release1.log)
    assert re.search(r"=+ \d+ passed", release1.log), release1.log[-2000:]
    print(f"rpmbuild (release 1): {release1.seconds:.1f} s")


def test_spec_version_is_the_project_version() -> None:
    project = tomllib.loads((harness.REPO / "pyproject.toml").read_text())["project"]
    spec_version = re.search(r"^Version:\s*(\S+)", harness.SPEC.read_text(), re.M)
    assert spec_version and spec_version.group(1) == project["version"]


def test_files_flags_and_dependencies(release1: harness.Build) -> None:
    files = dict(
        line.split(" ", 1) for line in query(release1.rpm, "[%{FILENAMES} %{FILEFLAGS:fflags}\n]")
    )
    assert files["/etc/sysconfig/mullvad-allow-k8s"] == "cn"  # %config(noreplace)
    assert files["/etc/nftables.d/k8s_bypass_mullvad.nft"] == "g"  # %ghost: rpm owns, deletes
    for path in (
        "/usr/bin/mullvad-allow-k8s",
        "/usr/lib/systemd/system/mullvad-allow-k8s.service",
        "/usr/lib/systemd/system-preset/50-mullvad-allow-k8s.preset",
        "/usr/share/man/man8/mullvad-allow-k8s.8.gz",
    ):
        assert path in files
    assert any(p.endswith("/mullvad_allow_k8s/cli.py") for p in files)
    requires = set(query(release1.rpm, "[%{REQUIRENAME}\n]"))
    assert {"nftables", "python3", "python3-netaddr", "python3-nftables", "iproute"} <= requires
    unit = (harness.REPO / "data" / "mullvad-allow-k8s.service").read_text()
    assert "ExecStart=/usr/bin/mullvad-allow-k8s " in unit  # where the spec installs it


def test_preset_enables_the_unit() -> None:
    lines = [
        line.strip()
        for line in (harness.REPO / "rpm" / "50-mullvad-allow-k8s.preset").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines == ["enable mullvad-allow-k8s.service"]


def test_sysconfig_is_the_schema_rendered_at_build_time(release1: harness.Build) -> None:
    digests = dict(
        line.split(" ", 1) for line in query(release1.rpm, "[%{FILENAMES} %{FILEDIGESTS}\n]")
    )
    expected = render_settings_file()
    assert digests[harness.SYSCONFIG] == hashlib.sha256(expected.encode()).hexdigest()
    # every setting documented: a comment right above each KEY= line, defaults unresolved
    lines = expected.splitlines()
    for field in SCHEMA:
        (index,) = [i for i, line in enumerate(lines) if line.startswith(f"{field.key}=")]
        assert lines[index - 1].startswith("# "), field.key
    assert "EPHEMERAL_PORTS=auto" in lines  # not the build machine's range


def test_rpmlint_has_no_errors(release1: harness.Build) -> None:
    proc = harness.run(
        ["rpmlint", "-c", harness.REPO / "rpm" / "rpmlintrc.toml", harness.SPEC, release1.rpm],
        check=False,
    )
    print(proc.stdout)
    summary = re.search(r"(\d+) errors, (\d+) warnings", proc.stdout)
    assert summary, proc.stdout + proc.stderr
    assert summary.group(1) == "0", proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
