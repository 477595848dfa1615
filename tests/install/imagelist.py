"""The image list (images.toml) and each image's tag, shared by `make images` and the tests.

An image's tag is a hash of everything that decides its content: its entry, its
parent's tag and the build recipe (imagebuild.fingerprint()). `make images` builds the
images whose tag is missing; the tests look for exactly that tag, so they never run
in an image built from an older recipe.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
IMAGES_TOML = HERE / "images.toml"
REPOSITORY = "localhost/mak-install"
KEYS = {
    "name", "family", "suite", "from", "include", "prepare", "systemd", "rpm_shim", "python",
    "enabled",
}  # fmt: skip


@dataclass(frozen=True)
class Image:
    name: str
    family: str  # "deb" or "rpm"
    digest: str
    suite: str | None = None  # root image: mmdebstrap of this Debian suite
    parent: Image | None = None  # derived from another image of the list
    registry: str | None = None  # or from a registry image
    include: tuple[str, ...] = ()
    prepare: str = ""
    systemd: bool = False
    rpm_shim: bool = False
    python: str | None = None  # X.Y: python3 laid out like Fedora's (imagebuild.PYTHON_SCRIPT)
    enabled: bool = True

    @property
    def tag(self) -> str:
        return f"{REPOSITORY}/{self.name}:{self.digest}"

    @property
    def url(self) -> str:
        """What pytest-container is given: local storage, never a pull."""
        return f"containers-storage:{self.tag}"

    @property
    def needs_registry(self) -> str | None:
        """The registry image this one is built on, directly or through its parents."""
        if self.registry:
            return self.registry
        return self.parent.needs_registry if self.parent else None

    @property
    def unbuildable(self) -> str | None:
        """Why this machine cannot build the image (beyond registries), or None."""
        if self.python:
            from tests.rpm.harness import missing_python  # noqa: PLC0415

            if why := missing_python(self.python):
                return why
        return self.parent.unbuildable if self.parent else None

    @property
    def how_to_build(self) -> str:
        if registry := self.needs_registry:
            return f"`make images IMAGES_PULL=yes` on a machine that can pull {registry}"
        return "`make images`"


def load(path: Path = IMAGES_TOML) -> list[Image]:
    from tests.install.imagebuild import fingerprint  # noqa: PLC0415 (imports this module)

    data = tomllib.loads(path.read_text())
    recipe = fingerprint()
    by_name: dict[str, Image] = {}
    for entry in data["image"]:
        name = entry.get("name", "?")

        def bad(why: str, name: str = name) -> ValueError:
            return ValueError(f"{path}: image {name}: {why}")

        if unknown := set(entry) - KEYS:
            raise bad(f"unknown key(s) {', '.join(sorted(unknown))}")
        if name in by_name:
            raise bad("listed twice")
        if entry.get("family") not in ("deb", "rpm"):
            raise bad("family must be deb or rpm")
        if ("suite" in entry) == ("from" in entry):
            raise bad("give exactly one of suite, from")
        include = list(entry.get("include", []))
        parent = registry = None
        if "suite" in entry:
            include = [*data["deb"]["include"], *include] if entry["family"] == "deb" else include
        elif entry["from"] in by_name:
            parent = by_name[entry["from"]]
        elif "/" in entry["from"]:
            registry = entry["from"]
            if include or not entry.get("prepare"):
                raise bad("an image from a registry installs its packages in `prepare`")
        else:
            raise bad(f"from = {entry['from']!r} is neither an image listed above nor a registry")
        content = {
            **{k: entry.get(k) for k in sorted(KEYS - {"enabled"})},
            "include": include,
            "parent": parent.tag if parent else None,
        }
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode() + recipe)
        by_name[name] = Image(
            name=name,
            family=entry["family"],
            digest=digest.hexdigest()[:12],
            suite=entry.get("suite"),
            parent=parent,
            registry=registry,
            include=tuple(include),
            prepare=entry.get("prepare", ""),
            systemd=bool(entry.get("systemd", False)),
            rpm_shim=bool(entry.get("rpm_shim", False)),
            python=entry.get("python"),
            enabled=bool(entry.get("enabled", True)),
        )
    return list(by_name.values())
