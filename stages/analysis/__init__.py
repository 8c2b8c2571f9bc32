"""Analysis stage: turns a generation request into a structured creative analysis."""
