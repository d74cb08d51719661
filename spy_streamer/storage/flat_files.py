"""`spy-streamer export --flat-file`: one channel's day in the layout of Polygon's flat files (gzip CSV),
so a capture joins flat-file history with no mapping by hand.

Polygon ships `us_stocks_sip/<dataset>/YYYY/MM/YYYY-MM-DD.csv.gz`, a day of the whole market sorted by
ticker and time, with its own names and forms: `ticker` (our `symbol`), `id` (`trade_id`), times as
integer nanoseconds (`*_ns`; a bar's `window_start` is its start), conditions and indicators as one
comma-separated field ("12,37"; none: empty), whole sizes as integers, and 0 where a trade has no TRF or
correction. FLAT_COLUMNS is that mapping, column by column, in Polygon's order; the README shows it.
Second bars have no flat file at Polygon: `A` is written in the minute-aggregates layout.

DuckDB reads the day's files and writes the CSV in one streaming COPY, sorting under a memory limit
(spilling beside the output), so a day of `T.*` needs no more memory than a day of `A.SPY`.
"""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path

from .layout import partition_dir, visible_parquet_files

DATASETS = {"T": "trades_v1", "Q": "quotes_v1", "AM": "minute_aggs_v1", "A": "second_aggs"}
MEMORY_LIMIT = "512MB"


def _whole(column: str) -> str:
    """A size as Polygon prints it: an integer when whole (always, for Polygon's own), else as stored."""
    return (f"CASE WHEN {column} = trunc({column}) THEN CAST(CAST({column} AS BIGINT) AS VARCHAR) "
            f"ELSE CAST({column} AS VARCHAR) END")


def _codes(column: str) -> str:
    """Codes as one field, "12,37"; none as an empty field (a null: DuckDB would quote an empty string)."""
    return f"nullif(array_to_string({column}, ','), '')"


_BARS = [("ticker", "symbol"), ("volume", "volume"), ("open", "open"), ("close", "close"), ("high", "high"),
         ("low", "low"), ("window_start", "epoch_us(start) * 1000"), ("transactions", "transactions")]
# Polygon's flat-file column -> the expression over our columns, in Polygon's column order.
FLAT_COLUMNS = {
    "T": [("ticker", "symbol"), ("conditions", _codes("conditions")), ("correction", "coalesce(correction, 0)"),
          ("exchange", "exchange"), ("id", "trade_id"),
          ("participant_timestamp", "coalesce(participant_timestamp_ns, 0)"), ("price", "price"),
          ("sequence_number", "sequence_number"), ("sip_timestamp", "sip_timestamp_ns"), ("size", _whole("size")),
          ("tape", "tape"), ("trf_id", "coalesce(trf_id, 0)"), ("trf_timestamp", "coalesce(trf_timestamp_ns, 0)")],
    "Q": [("ticker", "symbol"), ("ask_exchange", "ask_exchange"), ("ask_price", "ask_price"),
          ("ask_size", _whole("ask_size")), ("bid_exchange", "bid_exchange"), ("bid_price", "bid_price"),
          ("bid_size", _whole("bid_size")), ("conditions", _codes("conditions")),
          ("indicators", _codes("indicators")), ("participant_timestamp", "coalesce(participant_timestamp_ns, 0)"),
          ("sequence_number", "sequence_number"), ("sip_timestamp", "sip_timestamp_ns"), ("tape", "tape"),
          ("trf_timestamp", "coalesce(trf_timestamp_ns, 0)")],
    "AM": _BARS, "A": _BARS,
}
ORDER = {"T": "symbol, sip_timestamp_ns, sequence_number", "Q": "symbol, sip_timestamp_ns, sequence_number",
         "AM": "symbol, start", "A": "symbol, start"}


class ExportError(Exception):
    """Nothing to export, or the files could not be read or written: one line for a person."""


def default_output(channel: str, day: date) -> Path:
    """Where Polygon's bucket keeps the same day: <dataset>/YYYY/MM/YYYY-MM-DD.csv.gz (under the current folder)."""
    return Path(DATASETS[channel]) / f"{day:%Y}" / f"{day:%m}" / f"{day.isoformat()}.csv.gz"


def export_flat_file(data_dir: Path, day: date, channel: str, output: Path) -> int:
    """Write the channel's day to `output` (gzip CSV, Polygon's columns); the number of rows written.
    `output` appears whole or not at all (written to a hidden temporary beside it, then renamed)."""
    import duckdb

    files = visible_parquet_files(partition_dir(data_dir, channel, day))
    if not files:
        raise ExportError(f"no {channel} files for {day.isoformat()} in {data_dir}")
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.name}.tmp")
    connection = duckdb.connect(config={"memory_limit": MEMORY_LIMIT,
                                        "temp_directory": str(output.parent / ".export-spill")})
    try:
        rows = connection.execute(_copy(channel, files, temp)).fetchone()[0]
        os.replace(temp, output)
    except duckdb.Error as exc:
        raise ExportError(f"export of {channel} {day.isoformat()} failed: {str(exc).splitlines()[0]}") from None
    finally:
        connection.close()
        temp.unlink(missing_ok=True)
    return rows


def _copy(channel: str, files: list[Path], target: Path) -> str:
    columns = ", ".join(f"{expression} AS {name}" for name, expression in FLAT_COLUMNS[channel])
    sources = ", ".join(_literal(str(path)) for path in files)
    return (f"COPY (SELECT {columns} FROM read_parquet([{sources}], union_by_name = true) "
            f"ORDER BY {ORDER[channel]}) TO {_literal(str(target))} (FORMAT csv, HEADER, COMPRESSION gzip)")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
