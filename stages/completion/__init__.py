"""The completion stage."""
