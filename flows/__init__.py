"""Prefect flows over the `kristal` domain; loading the package applies `prefect_fixes`."""

from flows.prefect_fixes import no_heartbeat_join

no_heartbeat_join()
