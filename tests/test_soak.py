"""The soak at CI size: 30 mixed operations (activate, rollback, downgrade, reverify) over 4
channels with random faults and kill -9 crashes, then the invariant checker over every channel
(bench/soak.py; the long run is `python bench/soak.py --ops 1000 --channels 10`).

Uses the session SeaweedFS instead of starting another one; everything else (fault proxy,
workers, checker) is the soak's own.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from kristal.dev.processes import SeaweedProcess

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def _load_soak():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("kristal_bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_soak_30_operations_keeps_every_invariant(
    seaweed: SeaweedProcess, tmp_path: Path
) -> None:
    soak = _load_soak()
    result = soak.run_soak(30, 4, seed=7, endpoint=seaweed.endpoint_url,
                           workdir=tmp_path / "soak", fault_rate=0.3, crash_rate=0.1)
    print("\n" + result.report())
    assert result.ops == 30 and sum(result.outcomes.values()) == 30
    assert sum(result.faults.values()) > 0, "no fault fired: the soak tested nothing"
    assert sum(result.crashes.values()) > 0, "no crash happened: the soak tested nothing"
    assert not result.violations, "\n".join(result.violations)
    assert result.converged == 4
    # Every operation completed or failed with a coded KristalError.
    assert not result.uncoded, "\n\n".join(result.uncoded)
