"""Verification of a release as an ordered state machine, and the fetching that feeds it."""
