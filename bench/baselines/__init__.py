"""Baselines that end-to-end speedups are quoted against (SPEC §2.4)."""
