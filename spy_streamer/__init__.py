"""spy-streamer: record Polygon.io's real-time stock feed (aggregates, trades, quotes) into Parquet during US market hours."""

__version__ = "0.1.0"
