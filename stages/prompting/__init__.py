"""Prompting stage: writes one compliant micro-prompt per clip."""
