"""What an attacker who can change the served files (a mirror, a CDN, the web server)
does to a published repository. Every function changes a copy in place, after it was
signed, the way the attack would look to apt or dnf.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import re
from pathlib import Path


def _replace_everywhere(directory: Path, old: bytes, new: bytes) -> int:
    """Give every file under `directory` whose content is `old` the content `new`.

    That includes by-hash/ copies: the attacker serves the changed index under every
    name, though the by-hash names (the signed hashes) then no longer match.
    """
    count = 0
    for path in directory.rglob("*"):
        if path.is_file() and path.read_bytes() == old:
            path.write_bytes(new)
            count += 1
    return count


def apt_packages_edited(repo: Path) -> None:
    """Change the Packages index (same size: only the hashes tell): advertise another version."""
    index = repo / "apt/dists/stable/main/binary-all"
    old = (index / "Packages").read_bytes()
    new = re.sub(rb"(?m)^Version: \d", b"Version: 9", old, count=1)
    assert new != old and len(new) == len(old)
    for old_bytes, new_bytes in (
        (old, new),
        ((index / "Packages.gz").read_bytes(), gzip.compress(new, mtime=0)),
        ((index / "Packages.xz").read_bytes(), lzma.compress(new)),
    ):
        assert _replace_everywhere(index, old_bytes, new_bytes) >= 1


def apt_inrelease_edited(repo: Path) -> None:
    """Change a hash inside InRelease's signed text (and in Release, which Release.gpg signs)."""
    for name in ("InRelease", "Release"):
        path = repo / "apt/dists/stable" / name
        text = path.read_text()
        match = re.search(r"(?m)^SHA256:\n ([0-9a-f])", text)
        assert match, text
        flipped = "1" if match.group(1) != "1" else "2"
        path.write_text(text[: match.start(1)] + flipped + text[match.end(1) :])


def apt_unsigned(repo: Path) -> None:
    """Serve Release without any signature."""
    (repo / "apt/dists/stable/InRelease").unlink()
    (repo / "apt/dists/stable/Release.gpg").unlink()


def apt_deb_replaced(repo: Path, other_deb: Path) -> None:
    """Serve other content under the published .deb's name (indexes untouched)."""
    (published,) = (repo / "apt/pool").rglob("*.deb")
    published.write_bytes(other_deb.read_bytes())


def rpm_repomd_edited(repo: Path) -> None:
    """Change repodata/repomd.xml after it was signed (its revision)."""
    path = repo / "rpm/repodata/repomd.xml"
    text = path.read_text()
    new = re.sub(
        r"<revision>(\d)", lambda m: f"<revision>{(int(m.group(1)) + 1) % 10}", text, count=1
    )
    assert new != text
    path.write_text(new)


def rpm_unsigned(repo: Path) -> None:
    """Serve repomd.xml without its signature."""
    (repo / "rpm/repodata/repomd.xml.asc").unlink()


def rpm_primary_edited(repo: Path) -> None:
    """Change the package list (primary.xml.gz) that the signed repomd.xml names by hash."""
    (primary,) = (repo / "rpm/repodata").glob("*-primary.xml.gz")
    text = gzip.decompress(primary.read_bytes())
    new = text.replace(b"<summary>", b"<summary>Trojan: ", 1)
    assert new != text
    primary.write_bytes(gzip.compress(new, mtime=0))


def rpm_package_modified(repo: Path) -> None:
    """Change one byte of the published .rpm's payload (same size; metadata untouched)."""
    (published,) = (repo / "rpm/packages").glob("*.rpm")
    data = bytearray(published.read_bytes())
    data[-100] ^= 0xFF
    published.write_bytes(bytes(data))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
