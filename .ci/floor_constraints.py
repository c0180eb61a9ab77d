"""Print pyproject.toml's floors as pip constraints: every ``name>=X`` becomes ``name==X``.

``make test-floor`` installs the package under these constraints, so the suite runs on the
lowest version of each dependency that pyproject.toml allows (build backend, runtime and
``dev`` extras). The constraints are derived each time, never kept in a file of their own,
so the floors tested are the floors declared. A requirement without a ``>=`` floor is an
error: it would be tested at whatever version pip picks.
"""

import re
import sys
import tomllib
from pathlib import Path

FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(,.*)?$")


def floors(pyproject: Path) -> list:
    meta = tomllib.loads(pyproject.read_text())
    requirements = meta["build-system"]["requires"] + meta["project"]["dependencies"]
    requirements += meta["project"]["optional-dependencies"]["dev"]
    pins = {}
    for requirement in requirements:
        match = FLOOR.match(requirement)
        if match is None:
            sys.exit(f"error: {requirement!r} in {pyproject} has no '>=' floor to test")
        pins[match[1]] = match[2]
    return [f"{name}=={version}" for name, version in pins.items()]


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print("\n".join(floors(root / "pyproject.toml")))
