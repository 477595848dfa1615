"""The generator's CLI with its ruleset mutated, for bench/mutation.py --suites.

Used as NETLAB_GENERATOR (tests/netlab/scenarios.py): every `generate`, `apply`,
`status` or `doctor` the netlab tests run then renders the mutant that MUTATION_SPEC
(JSON, see mutation.apply_spec) names, made from whatever settings that test uses.
Without MUTATION_SPEC, or with `null`, it is the CLI itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from mutation import apply_spec  # noqa: E402

from mullvad_allow_k8s import cli, ruleset  # noqa: E402
from mullvad_allow_k8s.settings import Settings  # noqa: E402

SPEC = json.loads(os.environ.get("MUTATION_SPEC") or "null")

if SPEC:
    _render = ruleset.render

    def _mutated(settings: Settings) -> str:
        return apply_spec(_render(settings), SPEC)

    ruleset.render = _mutated

if __name__ == "__main__":
    sys.exit(cli.main())
