"""CI's own scripts and hooks (.ci/run, .ci/fetch-history, tests/conftest.py).

They need this checkout's git history, so they are not in tests/unit, which the Debian
and RPM builds run from a source tree that has none.
"""
