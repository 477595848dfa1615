"""The RPM on a Python laid out like Fedora's, RHEL 10's and Tumbleweed's.

Those distributions have no dist-packages directory on Python's search path: their
python3-* packages install into /usr/lib/python3.X/site-packages of their one Python
(3.12 on Fedora 40 and RHEL 10, 3.13 on Fedora 41/42 and Tumbleweed). Each test
installs the package with rpm into a Debian-userland system whose python3 is laid
out that way (harness.python_layer: CPython 3.12 and 3.13 at /usr, or Debian's 3.11
with dist-packages taken off its path) and runs its whole life there: %post loading
the table, `status`, `apply` after an edit, an upgrade, an erase.

Shown to fail with the RPM of before issue 13 (package in
/usr/lib/python3/dist-packages): `%post` and every command die with
"ModuleNotFoundError: No module named 'mullvad_allow_k8s'".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mullvad_allow_k8s import __version__
from tests.rpm import harness
from tests.rpm.harness import NFT_FILE, SYSCONFIG, TABLE

SystemFactory = Callable[..., harness.System]
APPDIR = "/usr/share/mullvad-allow-k8s"


@pytest.mark.parametrize("python", harness.FEDORA_LIKE)
def test_whole_life_on_a_fedora_like_python(
    system: SystemFactory, release1: Path, release2: Path, python: str
) -> None:
    sys_ = system(live=True, python=python)
    path = sys_.python_path()
    assert not [p for p in path if "dist-packages" in p], path
    assert f"/usr/lib/python{python}/site-packages" in path, path
    assert sys_.sh("python3 -B -c 'import sys; print(sys.version)'").stdout.startswith(python)

    # install: %post writes the file and loads the table
    proc = sys_.rpm("-i", release1)
    assert f"loaded table {TABLE} from {NFT_FILE}" in proc.stderr, proc.stderr
    assert sys_.tables() == {TABLE}
    assert sys_.sh("mullvad-allow-k8s status").returncode == 0
    launcher = sys_.read("/usr/bin/mullvad-allow-k8s") or ""
    assert launcher.splitlines()[0] == "#!/usr/bin/python3 -sPB"

    # the admin edits the settings and applies them
    sys_.set_setting("POD_CIDRS=10.42.0.0/16")
    assert sys_.sh("mullvad-allow-k8s status", check=False).returncode == 3  # stale
    sys_.sh("mullvad-allow-k8s apply")
    assert "10.42.0.0/16" in (sys_.table_text() or "")

    # upgrade: the kept settings are applied in one transaction, the table never missing
    with sys_.monitor() as transactions:
        sys_.rpm("-U", release2)
    assert f"mullvad-allow-k8s-{__version__}-2" in sys_.rpm("-q", "mullvad-allow-k8s").stdout
    ours = [t for t in transactions if t.touches_table()]
    assert len(ours) == 1 and ours[0].leaves_table_loaded(), transactions
    assert sys_.sh("mullvad-allow-k8s status").returncode == 0
    assert "10.42.0.0/16" in (sys_.table_text() or "")

    # erase: our table and files go; no bytecode was ever written (-B)
    proc = sys_.rpm("-e", "mullvad-allow-k8s")
    assert f"removed {TABLE}" in proc.stderr, proc.stderr
    assert sys_.tables() == set()
    assert sys_.pycache_written() == []
    assert not sys_.path(APPDIR).exists()
    assert sys_.leftovers() == [SYSCONFIG + ".rpmsave"]  # the edited settings, kept
