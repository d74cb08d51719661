"""`AM`: per-minute aggregates, REST source `/v2/aggs/.../1/minute`."""
from .aggregates import aggregate_channel

CHANNEL = aggregate_channel("AM", "minute aggregates", bar_ms=60_000, timespan="minute")
