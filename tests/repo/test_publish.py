"""`make repo-publish` output, checked with the tools clients use (no root needed).

Signatures are checked against the published public key only (gpgv with a keyring
made from mullvad-allow-k8s.asc, rpmkeys with a throwaway database), never against
the keyring that signed.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packages import Builds
from tests.repo.conftest import REPO, RPM_KEY, URL, Key, publish, run

NAME = "mullvad-allow-k8s"


def deb822(text: str) -> dict[str, str]:
    """One deb822 stanza (comments dropped, continuation lines joined with newlines)."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0] in " \t":
            fields[last] += "\n" + line[1:]
        else:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return fields


def keyring(repo: Path, tmp: Path) -> Path:
    """The published key as a keyring file for gpgv."""
    ring = tmp / "published.gpg"
    run(["gpg", "--batch", "--yes", "--dearmor", "-o", ring, repo / f"{NAME}.asc"])
    return ring


def gpgv(ring: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return run(["gpgv", "--keyring", ring, *files], check=False)


def test_the_apt_repository_is_signed_and_lists_the_package(
    published: Path, builds: Builds, key: Key, tmp_path: Path
) -> None:
    repo = published
    ring = keyring(repo, tmp_path)
    dists = repo / "apt/dists/stable"

    verified = gpgv(ring, dists / "InRelease")
    assert verified.returncode == 0, verified.stderr
    assert f"using RSA key {key.fingerprint}" in verified.stderr
    assert gpgv(ring, dists / "Release.gpg", dists / "Release").returncode == 0
    # InRelease signs exactly the Release file
    signed = run(["gpgv", "--keyring", ring, "--output", "-", dists / "InRelease"]).stdout
    assert signed == (dists / "Release").read_text()

    release = deb822((dists / "Release").read_text())
    assert release["Suite"] == release["Codename"] == "stable"
    assert release["Components"] == "main"
    assert release["Architectures"] == "all"
    assert release["Acquire-By-Hash"] == "yes"
    assert "MD5Sum" not in release and "SHA1" not in release
    sha256 = dict(
        (name, digest)
        for digest, _, name in (line.split() for line in release["SHA256"].strip().splitlines())
    )
    assert set(sha256) == {
        f"main/binary-all/{n}" for n in ("Packages", "Packages.gz", "Packages.xz")
    }
    for name, digest in sha256.items():
        path = dists / name
        assert run(["sha256sum", path]).stdout.split()[0] == digest
        by_hash = path.parent / "by-hash/SHA256" / digest
        assert by_hash.read_bytes() == path.read_bytes()

    index = deb822(gzip.decompress((dists / "main/binary-all/Packages.gz").read_bytes()).decode())
    field = run(["dpkg-deb", "--field", builds.deb, "Version"]).stdout.strip()
    assert index["Package"] == NAME and index["Version"] == field
    pool_file = repo / "apt" / index["Filename"]
    assert pool_file.read_bytes() == builds.deb.read_bytes()
    assert run(["sha256sum", pool_file]).stdout.split()[0] == index["SHA256"]

    # The .sources file: ready to drop into /etc/apt/sources.list.d/
    sources = deb822((repo / f"{NAME}.sources").read_text())
    assert sources["Types"] == "deb"
    assert sources["URIs"] == f"{URL}/apt"
    assert sources["Suites"] == "stable" and sources["Components"] == "main"
    inline = "\n".join(
        "" if line == "." else line for line in sources["Signed-By"].strip().splitlines()
    )
    assert inline.strip() == (repo / f"{NAME}.asc").read_text().strip()


def test_the_rpm_repository_and_its_packages_are_signed(
    published: Path, builds: Builds, key: Key, tmp_path: Path
) -> None:
    repo = published
    ring = keyring(repo, tmp_path)
    repodata = repo / "rpm/repodata"
    verified = gpgv(ring, repodata / "repomd.xml.asc", repodata / "repomd.xml")
    assert verified.returncode == 0, verified.stderr

    (rpm,) = (repo / "rpm/packages").glob("*.rpm")
    db = ["--dbpath", str(tmp_path / "rpmdb")]
    unsigned = run(["rpmkeys", *db, "--checksig", builds.rpm], check=False)
    # the build itself is not signed (rpm prints "signatures OK" or "SIGNATURES NOT OK")
    assert not re.search("signature", unsigned.stdout, re.IGNORECASE), unsigned.stdout
    run(["rpmkeys", *db, "--import", repo / f"{NAME}.asc"])
    checked = run(["rpmkeys", *db, "--checksig", "--verbose", rpm])
    assert re.search(rf"Signature, key ID {key.fingerprint[-8:].lower()}: OK", checked.stdout)
    # ... and signing changed nothing but the signature header
    query = ["rpm", "-qp", "--nosignature", "--qf", "%{SHA256HEADER}"]
    assert run([*query, rpm]).stdout == run([*query, builds.rpm]).stdout
    primary = next(repodata.glob("*-primary.xml.gz"))
    assert f"<name>{NAME}</name>".encode() in gzip.decompress(primary.read_bytes())

    dotrepo = (repo / f"{NAME}.repo").read_text()
    settings = dict(
        line.split("=", 1)
        for line in dotrepo.splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert f"[{NAME}]" in dotrepo
    assert settings["baseurl"] == f"{URL}/rpm"
    assert settings["gpgkey"] == f"file://{RPM_KEY}"  # local: a tampered server cannot swap it
    assert settings["gpgcheck"] == settings["repo_gpgcheck"] == settings["enabled"] == "1"


def test_publishing_again_adds_and_never_replaces_published_content(
    repo_copy: Path, builds: Builds, key: Key, tmp_path: Path
) -> None:
    dists = repo_copy / "apt/dists/stable"
    again = publish(repo_copy, key, debs=(builds.deb,), rpms=(builds.rpm,))
    assert "already published" in again.stdout

    # Other content under a published name is refused, and nothing changes.
    before = {p: p.read_bytes() for p in repo_copy.rglob("*") if p.is_file()}
    forged = tmp_path / builds.deb.name
    shutil.copy(builds.deb_upgrade, forged)
    refused = run(
        [
            "make",
            "-s",
            "-C",
            REPO,
            "repo-publish",
            f"REPO_DIR={repo_copy}",
            f"REPO_GNUPGHOME={key.home}",
            f"REPO_DEBS={forged}",
        ],
        check=False,
    )
    assert refused.returncode != 0
    assert "is published with other content" in refused.stderr
    assert {p: p.read_bytes() for p in repo_copy.rglob("*") if p.is_file()} == before

    # A new version is added next to the old one; both stay listed.
    publish(repo_copy, key, debs=(builds.deb_upgrade,), rpms=(builds.rpm_upgrade,))
    stanzas = (dists / "main/binary-all/Packages").read_text().strip().split("\n\n")
    assert len(stanzas) == 2
    for stanza in map(deb822, stanzas):  # each entry's hash is its own file's
        pool_file = repo_copy / "apt" / stanza["Filename"]
        assert run(["sha256sum", pool_file]).stdout.split()[0] == stanza["SHA256"]
        assert int(stanza["Size"]) == pool_file.stat().st_size
        assert "MD5sum" not in stanza
    assert len(list((repo_copy / "rpm/packages").glob("*.rpm"))) == 2
    ring = keyring(repo_copy, tmp_path)
    assert gpgv(ring, dists / "InRelease").returncode == 0
    repodata = repo_copy / "rpm/repodata"
    assert gpgv(ring, repodata / "repomd.xml.asc", repodata / "repomd.xml").returncode == 0


def test_the_publishing_scripts_pass_shellcheck() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("needs shellcheck (.ci/apt/repo.txt)")
    run(["shellcheck", REPO / "repo/publish", REPO / "repo/test-key"])
