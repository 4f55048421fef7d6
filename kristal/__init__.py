"""kristal-activate: verify, stage, switch and check Kristal data releases (no Prefect here)."""

__version__ = "0.1.0"
