"""Prefect flows over the `kristal` domain. Each flow module applies `prefect_fixes` on import;
the package itself imports nothing, so `kristalctl` can set Prefect's environment first."""
