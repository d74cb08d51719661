"""Leftover of the pre-channel names: `tests/test_batch_writer.py` still imports SCHEMA from here. Use
`spy_streamer.channels` (or the tests' `channel_parsing`); this module goes once that import does."""
from .channels.aggregates import SCHEMA

__all__ = ["SCHEMA"]
