"""The clips stage."""
