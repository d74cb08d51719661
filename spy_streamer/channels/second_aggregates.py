"""`A`: per-second aggregates (one bar per symbol per second with trades), REST source `/v2/aggs/.../1/second`."""
from .aggregates import aggregate_channel

CHANNEL = aggregate_channel("A", "second aggregates", bar_ms=1000, timespan="second")
