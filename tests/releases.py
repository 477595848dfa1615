"""Earlier releases, built from this repository's own history for upgrade tests.

An upgrade test must start from what users really have installed, so it builds the
released package from the commit it was released from; nothing is fetched. In a
shallow clone that commit is missing: the tests that need it skip, saying so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The commit 0.1.0 was released from (the last commit of the 0.1 line).
RELEASE_0_1_0 = "d1eb60aba3784420505eeebbfd922f78c328e3aa"
# The commit 0.2.0 was released from (the last commit of the 0.2 line).
RELEASE_0_2_0 = "fbb3b9442b2ed02fa0995b53ebab3a8cdfa16fd7"
NOT_IN_CHECKOUT = "0.1.0's commit is not in this checkout (shallow clone?): cannot build it"
NOT_IN_CHECKOUT_0_2_0 = NOT_IN_CHECKOUT.replace("0.1.0", "0.2.0")


def release_tree(commit: str, dest: Path) -> Path | None:
    """The source tree of `commit` extracted into `dest`, or None if git lacks it."""
    probe = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return None
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    # A repository of its own holding exactly those files: the release's build targets
    # read their sources with git (`git archive`, `git ls-files`).
    git = ["git", "-C", str(dest), "-c", "user.name=tests", "-c", "user.email=tests@invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", commit]):
        subprocess.run([*git, *args], capture_output=True, check=True)
    return dest
