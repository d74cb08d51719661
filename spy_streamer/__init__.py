"""spy-streamer: capture Polygon.io per-second SPY aggregates into Parquet during US market hours."""

__version__ = "0.1.0"
