"""Seeded synthetic cardiac anatomy with known truth (compute layer)."""
