"""The intake stage."""
