"""Issue 19: every field Polygon documents is stored, exactly, and five engines read every channel's folder.

One capture for the module: the real daemon (a subprocess) against the fake Polygon, subscribed to A, AM,
T and Q, fed events that carry every field Polygon documents (and a few that lack optional ones), plus a
REST backfill of second bars. Then sent is compared with stored field for field, and pyarrow, DuckDB,
Polars, pandas and Spark read each channel's folder before and after `compact` with the README's own
recipes (extracted from README.md), giving the same rows and values.
"""
from __future__ import annotations

import re
import shutil
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import REPO_ROOT, TEST_API_KEY
from daemon_harness import Run, wait_for
from fake_polygon import FakePolygon, agg_event, quote_event, quote_result, trade_event, trade_result
from spy_streamer.channels import channel_for
from spy_streamer.channels.parsing import rest_results_with_reasons
from spy_streamer.storage import lake_tables
from spy_streamer.storage.compaction import compact_day

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
CHANNELS = ("A", "AM", "T", "Q")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Polygon's documented fields -> our column. From Polygon's WebSocket and REST references and the models of
# its successor client `massive` (EquityAgg, EquityTrade, EquityQuote; Agg, Trade, Quote), written out
# here rather than read from the channels, so that a field the code forgets fails.
BAR_FIELDS = {"sym": "symbol", "v": "volume", "av": "accumulated_volume", "op": "official_open", "vw": "vwap",
              "o": "open", "c": "close", "h": "high", "l": "low", "a": "day_vwap", "z": "average_size",
              "s": "start", "e": "end", "otc": "otc", "dv": "decimal_volume", "dav": "decimal_accumulated_volume"}
WS_FIELDS = {
    "A": BAR_FIELDS, "AM": BAR_FIELDS,
    "T": {"sym": "symbol", "x": "exchange", "i": "trade_id", "z": "tape", "p": "price", "s": "size",
          "ds": "decimal_size", "c": "conditions", "t": "sip_timestamp_ns", "pt": "participant_timestamp_ns",
          "q": "sequence_number", "trfi": "trf_id", "trft": "trf_timestamp_ns"},
    "Q": {"sym": "symbol", "bx": "bid_exchange", "bp": "bid_price", "bs": "bid_size", "ax": "ask_exchange",
          "ap": "ask_price", "as": "ask_size", "c": "conditions", "i": "indicators", "t": "sip_timestamp_ns",
          "pt": "participant_timestamp_ns", "q": "sequence_number", "z": "tape", "trfi": "trf_id",
          "trft": "trf_timestamp_ns"},
}
REST_FIELDS = {
    "A": {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume", "vw": "vwap", "t": "start",
          "n": "transactions", "otc": "otc"},
    "T": {"conditions": "conditions", "correction": "correction", "exchange": "exchange", "id": "trade_id",
          "participant_timestamp": "participant_timestamp_ns", "price": "price", "sequence_number": "sequence_number",
          "sip_timestamp": "sip_timestamp_ns", "size": "size", "tape": "tape", "trf_id": "trf_id",
          "trf_timestamp": "trf_timestamp_ns", "decimal_size": "decimal_size"},
    "Q": {"ask_exchange": "ask_exchange", "ask_price": "ask_price", "ask_size": "ask_size",
          "bid_exchange": "bid_exchange", "bid_price": "bid_price", "bid_size": "bid_size",
          "conditions": "conditions", "indicators": "indicators", "participant_timestamp": "participant_timestamp_ns",
          "sequence_number": "sequence_number", "sip_timestamp": "sip_timestamp_ns", "tape": "tape",
          "trf_timestamp": "trf_timestamp_ns"},
}
ABSENT = {"conditions": [], "indicators": [], "otc": False}   # what Polygon documents an absent field to mean
ENGINES = ("arrow", "duck", "polars", "pandas", "spark")
# The `date` partition as each engine infers it (the README says so, and gives the casts for the first two).
DATE_TYPES = {"arrow": "string", "duck": "date32[day]", "polars": "Date", "pandas": "dictionary", "spark": "DateType()"}


# --- the capture ---

def sent_events(now_ms: int) -> dict[str, list[dict]]:
    """Events of each channel with every documented field, and some without the optional ones."""
    second = now_ms - now_ms % 1000 - 3000
    minute = now_ms - now_ms % 60_000 - 5 * 60_000
    bar = agg_event(second, "SPY", volume=250)
    bar.update(dv="250.125", dav="1250.5")
    bare_bar = {key: value for key, value in agg_event(second + 1000, "SPY").items() if key not in ("dv", "dav")}
    minute_bar = dict(agg_event(minute, "SPY", volume=9000, otc=True), ev="AM", e=minute + 60_000, dav="12345.75")
    fractional = dict(trade_event(second, trade_id="f1", size=0, sequence=7, trf_id=202), ds="0.123456789012345678")
    no_conditions = {key: value for key, value in trade_event(second + 1, trade_id="n2", exchange=11, sequence=8).items()
                     if key not in ("c", "pt", "ds")}
    return {"A": [bar, bare_bar, agg_event(second, "FNMA", price=8.5, otc=True)], "AM": [minute_bar],
            "T": [fractional, no_conditions, trade_event(second + 2, trade_id="w3", size=300, sequence=9)],
            "Q": [quote_event(second, sequence=11, trf_id=201),
                  {key: value for key, value in quote_event(second + 1, sequence=12).items() if key not in ("c", "i")}]}


def rest_bars(now_ms: int) -> list[dict]:
    """Second bars only /v2/aggs knows (the daemon, started mid-session, backfills them), with `n` and `otc`."""
    first = now_ms - now_ms % 1000 - 60_000
    return [dict(agg_event(first + i * 1000, "FNMA", price=8.5, otc=True), n=40 + i) for i in range(3)]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """(data_dir of the daemon's capture, the events sent per channel, the REST-only bars)."""
    tmp_path = tmp_path_factory.mktemp("capture")
    now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    events, backfill = sent_events(now_ms), rest_bars(now_ms)
    subscriptions = ["A.SPY", "A.FNMA", "AM.SPY", "T.SPY", "Q.SPY"]
    with FakePolygon(api_key=TEST_API_KEY) as fake:
        fake.add_to_timeline(backfill)
        run = Run(tmp_path, fake, polygon={"subscriptions": subscriptions})
        try:
            assert fake.wait_for_subscribers(1, timeout=30)
            for channel in CHANNELS:
                fake.push(events[channel])
            wait_for(lambda: stored_count(run.data_dir) >= sum(map(len, events.values())) + len(backfill),
                     timeout=30, what="every sent and backfilled row on disk")
            assert run.daemon.stop()[0] == 0
        finally:
            run.daemon.kill()
    return run.data_dir, events, backfill


def stored_count(data_dir: Path) -> int:
    return sum(read_folder(data_dir / channel).num_rows for channel in CHANNELS if (data_dir / channel).is_dir())


def read_folder(folder: Path) -> pa.Table:
    return ds.dataset(folder, format="parquet", partitioning="hive").to_table()


@pytest.fixture(scope="module")
def folders(capture, tmp_path_factory) -> dict[str, Path]:
    """The capture as written ("before") and a copy after `compact` of each channel's day ("after")."""
    data_dir = capture[0]
    after = tmp_path_factory.mktemp("compacted") / "data"
    shutil.copytree(data_dir, after)
    for channel in CHANNELS:
        for folder in (after / channel).glob("date=*"):
            compact_day(after, date.fromisoformat(folder.name.removeprefix("date=")), channel=channel)
    assert all(len(list((after / channel).glob("date=*/*.parquet"))) == 1 for channel in CHANNELS)
    return {"before": data_dir, "after": after}


# --- sent against stored, field for field ---

def expected(column: str, field: str, value, kind: pa.DataType):
    """What Polygon's `field` (WebSocket ms, REST ns) becomes in `column` of type `kind`."""
    if value is None:
        return ABSENT.get(column)
    if column.endswith("_ns"):
        return value * 1_000_000 if field in ("t", "pt", "trft") else value
    if pa.types.is_timestamp(kind):
        return EPOCH + timedelta(milliseconds=value)
    if pa.types.is_decimal(kind):
        return Decimal(value)
    if pa.types.is_list(kind) and not isinstance(value, list):
        return [value]        # a quote's one condition on the stream
    return float(value) if pa.types.is_floating(kind) else value


def stored_by_key(data_dir: Path, channel: str) -> dict[tuple, dict]:
    key = channel_for(channel).dedup_key
    return {tuple(row[name] for name in key): row for row in read_folder(data_dir / channel).to_pylist()}


def assert_row_matches(row: dict, event: dict, fields: dict[str, str], channel: str) -> None:
    schema = channel_for(channel).schema
    for field, column in fields.items():
        assert row[column] == expected(column, field, event.get(field), schema.field(column).type), (channel, field)
    for name in channel_for(channel).exact_times:   # the microsecond timestamp beside each exact time
        exact = row[name + "_ns"]
        assert row[name] == (None if exact is None else EPOCH + timedelta(microseconds=exact // 1000)), name


def test_every_documented_field_has_a_column_and_a_mapping():
    """Regression: `ds`, `pt`, `otc`, `trfi` on quotes and REST's `n` had no column; their values were dropped."""
    for channel in CHANNELS:
        mapped = {**channel_for(channel).ws_required, **channel_for(channel).ws_optional}
        assert {key: column for column, key in mapped.items()} == WS_FIELDS[channel], channel
    for channel, fields in REST_FIELDS.items():
        mapped = {**channel_for(channel).rest_required, **channel_for(channel).rest_optional}
        assert {key: column for column, key in mapped.items()} == fields, channel


def test_what_the_fake_sent_is_what_the_files_hold(capture):
    data_dir, events, _ = capture
    for channel in CHANNELS:
        stored = stored_by_key(data_dir, channel)
        for event in events[channel]:
            row = stored[tuple(_key_value(channel, name, event) for name in channel_for(channel).dedup_key)]
            assert row["source"] == "ws"
            assert_row_matches(row, event, WS_FIELDS[channel], channel)


def _key_value(channel: str, column: str, event: dict):
    field = {column: field for field, column in WS_FIELDS[channel].items()}[column]
    return expected(column, field, event.get(field), channel_for(channel).schema.field(column).type)


def test_a_trade_without_conditions_has_an_empty_list(capture):
    """Regression: a trade without `c` was stored with null conditions."""
    trades = read_folder(capture[0] / "T")
    assert trades.column("conditions").null_count == 0
    assert trades.filter(pc.equal(trades.column("trade_id"), "n2")).column("conditions").to_pylist() == [[]]


def test_the_fractional_size_is_exact(capture):
    trades = read_folder(capture[0] / "T").filter(pc.equal(pc.field("trade_id"), "f1"))
    assert trades.schema.field("decimal_size").type == pa.decimal128(38, 18)
    assert trades.column("decimal_size").to_pylist() == [Decimal("0.123456789012345678")]   # 18 digits: no float has them


def test_rest_bars_keep_transactions_and_otc(capture):
    """Regression: REST's `n` was fetched and thrown away."""
    data_dir, _, backfill = capture
    stored = stored_by_key(data_dir, "A")
    for bar in backfill:
        row = stored[("FNMA", EPOCH + timedelta(milliseconds=bar["s"]))]
        assert row["source"] == "rest" and (row["transactions"], row["otc"]) == (bar["n"], True)
        assert row["end"] == EPOCH + timedelta(milliseconds=bar["s"] + 1000)


@pytest.mark.parametrize("channel, result", [
    ("T", trade_result(trade_event(1_767_000_000_000, trf_id=202))),
    ("Q", quote_result(quote_event(1_767_000_000_000, trf_id=201))),
])
def test_every_rest_field_of_a_tick_is_stored(channel, result):
    assert set(result) == set(REST_FIELDS[channel])          # the fake sends every documented field
    table, rejected = rest_results_with_reasons(channel_for(channel), "SPY", [result], 0)
    assert not rejected
    assert_row_matches(table.to_pylist()[0], result, REST_FIELDS[channel], channel)


def test_no_file_holds_nanosecond_timestamps(folders):
    """Regression: trades' and quotes' files held TIMESTAMP(NANOS), which Spark refuses by default
    ([PARQUET_TYPE_ILLEGAL]); now every timestamp is in microseconds and one schema serves both stores."""
    for data_dir in folders.values():
        for path in data_dir.glob("*/date=*/*.parquet"):
            units = {field.type.unit for field in pq.read_schema(path) if pa.types.is_timestamp(field.type)}
            assert units == {"us"}, path
    for channel in CHANNELS:
        schema = channel_for(channel).schema
        assert lake_tables.to_lake_types(schema.empty_table()).schema == schema   # the lake's is the same


# --- the README's recipes, in every engine ---

def readme_block(name: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {name} -->\s*```python\n(.*?)```\s*<!-- end {name} -->", text, re.S)
    assert found, f"README.md has no {name} block"
    return "\n".join(line.strip() for line in found.group(1).splitlines())


def recipes() -> dict[str, str]:
    """Each paragraph of the README's reader recipes, by the name it assigns (arrow, duck, ...)."""
    paragraphs = [part.strip() for part in readme_block("reader-recipes").split("\n\n")][1:]   # the first sets `folder`
    return {re.search(r"^(\w+) = ", part, re.M).group(1): part for part in paragraphs}


def date_casts() -> dict[str, str]:
    return {re.match(r"(\w+)", line).group(1): line for line in readme_block("date-casts").splitlines() if line}


def read_with(engine: str, folder: Path, cast_date: bool = False):
    namespace = {"folder": str(folder)}
    exec(recipes()[engine], namespace)
    if cast_date and engine in date_casts():
        exec(date_casts()[engine], namespace)
    return namespace[engine]


def as_arrow(engine: str, result) -> pa.Table:
    if engine == "polars":
        return result.to_arrow()
    if engine == "pandas":
        return pa.Table.from_pandas(result, preserve_index=False)
    return result.toArrow() if engine == "spark" else result


def normalized(table: pa.Table, channel: str) -> pa.Table:
    """The channel's columns and `date`, in the channel's types, rows in key order: engines may differ in
    string and list widths, time zone names and column order, never in values."""
    schema = channel_for(channel).schema.append(pa.field("date", pa.date32()))
    columns = []
    for field in schema:
        column = table.column(field.name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns.append(column.cast(field.type))
    order = [(name, "ascending") for name in (*channel_for(channel).dedup_key, "date")]
    return pa.Table.from_arrays(columns, schema=schema).sort_by(order)


def date_type(engine: str, result) -> str:
    if engine == "polars":
        return str(result.schema["date"])
    if engine == "spark":
        return str(result.schema["date"].dataType)
    table = as_arrow(engine, result)
    kind = table.schema.field("date").type
    return "dictionary" if pa.types.is_dictionary(kind) else str(kind)


@pytest.fixture(scope="module")
def spark_session():
    """One local Spark for the module (about 20 s to start), or a skip saying why there is none."""
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime (17 or later) and none is on PATH")
    sql = pytest.importorskip("pyspark.sql", reason="pyspark is a test extra: pip install -e '.[test]'")
    session = (sql.SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "1").getOrCreate())
    yield session
    session.stop()


@pytest.fixture
def engine_ready(request):
    """Spark's session exists before a Spark recipe runs (its getOrCreate() then takes this one)."""
    if request.param == "spark":
        request.getfixturevalue("spark_session")
    return request.param


@pytest.mark.parametrize("state", ["before", "after"])
@pytest.mark.parametrize("engine_ready", ENGINES, indirect=True)
def test_each_engine_reads_every_channel_folder_with_the_same_rows_and_values(engine_ready, state, folders):
    engine, data_dir = engine_ready, folders[state]
    for channel in CHANNELS:
        folder = data_dir / channel
        reference = normalized(read_with("arrow", folder, cast_date=True), channel)
        result = read_with(engine, folder)
        assert date_type(engine, result) == DATE_TYPES[engine], (engine, channel)
        assert normalized(as_arrow(engine, read_with(engine, folder, cast_date=True)), channel).equals(reference), \
            (engine, channel, state)


def test_pandas_keeps_nullable_integers_as_integers(folders):
    """pandas' default dtypes turn an int64 column with a null into float64 (`trf_id`, `correction`, the
    `_ns` times): the README's recipe (dtype_backend="pyarrow") keeps them int64 and exact."""
    trades = read_with("pandas", folders["before"] / "T")
    for name in ("trf_id", "correction", "participant_timestamp_ns", "trf_timestamp_ns"):
        assert str(trades[name].dtype) == "int64[pyarrow]", name
        assert trades[name].isna().any()   # nulls there, still integers


def test_duckdb_reads_the_bars_end_quoted(folders):
    """`end` is a reserved word in SQL: the README says to quote it (the name is DESIGN.md's)."""
    import duckdb
    pattern = f"{folders['after'] / 'A'}/*/*.parquet"
    ends = duckdb.sql(f"SELECT \"end\" FROM read_parquet('{pattern}', hive_partitioning = true) ORDER BY 1").fetchall()
    assert [end for (end,) in ends] == sorted(read_folder(folders["after"] / "A").column("end").to_pylist())
