"""`settings --migrate`: rewrite a settings file of an earlier version in place.

The packages run it on upgrade, so the retired keys are gone from the file (and the
note about them is shown once) instead of being translated on every run. Only the
lines of retired keys and the documentation block directly above each change; every
other line, comment and manual edit stays.
"""

from __future__ import annotations

import shlex
import textwrap

from .settings import FIELDS, RETIRED, migrate, parse_settings_file


def _doc_block_start(lines: list[str], index: int) -> int:
    """First line of the comment block directly above lines[index]."""
    start = index
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return start


def migrate_text(text: str, origin: str = "settings file") -> tuple[str, list[str]]:
    """The file without retired keys (a note line in their place) and the notes.

    Raises SettingsError where the file cannot be parsed: nothing is rewritten then.
    """
    raw = parse_settings_file(text, origin)
    current, notes = migrate(raw)
    if not notes:
        return text, []
    lines = text.splitlines()
    out: list[str] = []
    added_host_ports = "HOST_PORTS" in current and "HOST_PORTS" not in raw
    for number, line in enumerate(lines):
        key = line.strip().partition("=")[0].strip()
        if key not in RETIRED or line.lstrip().startswith("#"):
            out.append(line)
            continue
        # Drop the retired key's documentation block (it documents an old model).
        del out[len(out) - (number - _doc_block_start(lines, number)) :]
        out.append(f"# {key} was retired in 0.2.0 (see NEWS); its line was {line.strip()!r}")
        if key == "INBOUND_PORTS" and added_host_ports:
            field = FIELDS["HOST_PORTS"]
            out += textwrap.wrap(field.help, 78, initial_indent="# ", subsequent_indent="# ")
            out.append(f"HOST_PORTS={shlex.quote(current['HOST_PORTS'])}")
            added_host_ports = False
    return "\n".join(out) + "\n", notes
