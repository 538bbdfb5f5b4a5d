"""Tag-digest newsletter: per-tag digests on each reader's cadence, sent through SMTP."""

__version__ = "0.1.0"
