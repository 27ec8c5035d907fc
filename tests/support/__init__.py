"""Test support code shared by tests/ and bench/ (the ground-truth harness)."""
