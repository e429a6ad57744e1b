"""Tests of the synthetic poster web fixture."""
