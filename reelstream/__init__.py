"""reelstream's shared plumbing: settings, Kafka runtime, database, storage, providers, media, CLI.

Stages and the gateway use this package and :mod:`schemas`; they never import each other.
"""
