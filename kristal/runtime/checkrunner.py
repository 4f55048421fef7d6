"""Runs one pack's post-activation checks in a fresh process, so that peak RSS is the
checks' own and not the orchestrator's (DESIGN §7: memory is the peak RSS of the process
running the checks). `python -m kristal.runtime.checkrunner DB SOURCE_SHA256` reads the
expectations JSON on stdin and writes the report JSON on stdout; the child imports no pydantic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kristal.errors import StorageUnavailable
from kristal.runtime.measure import measure
from kristal.runtime.sqlite_index import PinnedReader

if TYPE_CHECKING:
    from kristal.formats.expectations import Expectations
    from kristal.runtime.checks import CheckReport

CHECK_TIMEOUT_S = 600


def run_checks_isolated(db_path: Path, expectations: Expectations,
                        source_sha256: str) -> CheckReport:
    """The checks of the index at `db_path`, which must be built from `source_sha256`."""
    from kristal.runtime.checks import CheckReport

    proc = subprocess.run(
        [sys.executable, "-m", "kristal.runtime.checkrunner", str(db_path), source_sha256],
        input=expectations.model_dump_json().encode(),
        capture_output=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise StorageUnavailable(
            f"check process failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[-400:]}"
        )
    return CheckReport.model_validate_json(proc.stdout)


def main() -> None:
    expectations = json.loads(sys.stdin.read())
    with PinnedReader(Path(sys.argv[1]), source_sha256=sys.argv[2]) as reader:
        report = measure(reader, expectations)
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
