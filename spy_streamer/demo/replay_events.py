"""The replay's data: Polygon's event shapes (`A`, `T`, `Q`, status), their REST twins, timelines and
random walks, holiday rows. Used by the replay server, the demo and the tests (`from fake_polygon import`)."""
from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Iterable, Iterator
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")


def agg_event(start_ms: int, symbol: str = "SPY", price: float = 500.0, volume: int = 100,
              accumulated_volume: int | None = None, official_open: float | None = None, otc: bool = False) -> dict:
    """One Polygon per-second aggregate ("A") event with every field the feed sends (`otc` only when true:
    Polygon leaves it off otherwise; `dv`, `dav` are the volumes as decimal strings)."""
    accumulated = int(volume if accumulated_volume is None else accumulated_volume)
    return {
        "ev": "A", "sym": symbol,
        "v": int(volume),
        "av": accumulated,
        "dv": str(int(volume)),
        "dav": str(accumulated),
        "op": round(price if official_open is None else official_open, 4),
        "vw": round(price + 0.01, 4),
        "o": round(price, 4),
        "c": round(price + 0.02, 4),
        "h": round(price + 0.05, 4),
        "l": round(price - 0.03, 4),
        "a": round(price + 0.015, 4),
        "z": max(1, int(volume) // 10),
        "s": int(start_ms),
        "e": int(start_ms) + 1000,
        **({"otc": True} if otc else {}),
    }


def _timeline_iter(start_ms: int, count: int, symbol: str) -> Iterator[dict]:
    base, accumulated = 500.0, 0
    for i in range(count):
        volume = 100 + (i * 37) % 900
        accumulated += volume
        price = round(base + (i % 200) * 0.01, 2)
        yield agg_event(start_ms + i * 1000, symbol, price, volume, accumulated, base)


def session_timeline(start_ms: int, count: int, symbol: str = "SPY") -> list[dict]:
    """`count` consecutive one-second events; values derive from the index only."""
    return list(_timeline_iter(start_ms, count, symbol))


# Where the replay's random walks start (prices of late 2025); another symbol starts at 100.
REFERENCE_PRICES = {"SPY": 600.0, "QQQ": 520.0, "IWM": 225.0, "DIA": 440.0}
# One standard deviation of a one-second return: about 1 % over a 23,400-second day, like SPY.
SECOND_VOLATILITY = 0.00007
REPLAY_HISTORY_KEPT_MS = 2 * 3_600_000  # a long demo keeps two hours for /v2/aggs, not the whole run


class RandomWalk:
    """One symbol's second bars, one after another: the price walks, volume and the day's VWAP add up."""

    def __init__(self, symbol: str, rng: random.Random, price: float | None = None):
        self.symbol = symbol
        self.rng = rng
        self.price = round(price or REFERENCE_PRICES.get(symbol, 100.0), 2)
        self.official_open = self.price
        self.accumulated = 0
        self.turnover = 0.0

    def bar(self, start_ms: int) -> dict:
        rng, open_ = self.rng, self.price
        close = round(open_ * (1 + rng.gauss(0, SECOND_VOLATILITY)), 2)
        wick = round(abs(rng.gauss(0, SECOND_VOLATILITY)) * open_, 2)
        high, low = max(open_, close) + wick, min(open_, close) - wick
        volume = max(1, int(rng.lognormvariate(7.5, 0.8)))  # a median of about 1,800 shares a second
        vwap = rng.uniform(low, high)
        self.price, self.accumulated, self.turnover = close, self.accumulated + volume, self.turnover + vwap * volume
        return {"ev": "A", "sym": self.symbol, "v": volume, "av": self.accumulated, "dv": str(volume),
                "dav": str(self.accumulated), "op": self.official_open,
                "vw": round(vwap, 4), "o": open_, "c": close, "h": round(high, 2), "l": round(low, 2),
                "a": round(self.turnover / self.accumulated, 4), "z": max(1, volume // rng.randint(20, 120)),
                "s": start_ms, "e": start_ms + 1000}


def trade_event(time_ms: int, symbol: str = "SPY", trade_id: str = "1", price: float = 500.0, size: int = 100,
                exchange: int = 4, sequence: int = 1, trf_id: int | None = None) -> dict:
    """One Polygon trade ("T") event as the WebSocket sends it (times in ms, `ds` the size as a decimal
    string); with `trf_id`, an off-exchange print reported through that TRF (`trfi`, `trft`)."""
    event = {"ev": "T", "sym": symbol, "x": exchange, "i": trade_id, "z": 2, "p": price, "s": size, "ds": str(size),
             "c": [12, 37], "t": time_ms, "pt": time_ms - 1, "q": sequence}
    if trf_id is not None:
        event.update(trfi=trf_id, trft=time_ms - 1)
    return event


def trade_result(event: dict) -> dict:
    """The same trade as /v3/trades answers it (nanoseconds, long names)."""
    result = {"sip_timestamp": event["t"] * 1_000_000 + 123, "participant_timestamp": event["t"] * 1_000_000 - 5000,
              "exchange": event["x"], "id": event["i"], "tape": event["z"], "price": event["p"], "size": event["s"],
              "decimal_size": event["ds"], "conditions": event["c"], "sequence_number": event["q"], "correction": 0}
    if "trfi" in event:
        result.update(trf_id=event["trfi"], trf_timestamp=event["trft"] * 1_000_000 + 45)
    return result


def quote_event(time_ms: int, symbol: str = "SPY", sequence: int = 1, bid: float = 499.99, ask: float = 500.01,
                trf_id: int | None = None) -> dict:
    """One Polygon NBBO quote ("Q") event as the WebSocket sends it (one condition, times in ms)."""
    event = {"ev": "Q", "sym": symbol, "bx": 11, "bp": bid, "bs": 2, "ax": 12, "ap": ask, "as": 3, "c": 1,
             "i": [604], "t": time_ms, "pt": time_ms - 1, "q": sequence, "z": 2}
    if trf_id is not None:
        event.update(trfi=trf_id, trft=time_ms - 1)
    return event


def quote_result(event: dict) -> dict:
    """The same quote as /v3/quotes answers it."""
    result = {"sip_timestamp": event["t"] * 1_000_000 + 77, "participant_timestamp": event["t"] * 1_000_000 - 900,
              "bid_exchange": event["bx"], "bid_price": event["bp"], "bid_size": event["bs"],
              "ask_exchange": event["ax"], "ask_price": event["ap"], "ask_size": event["as"],
              "conditions": [event["c"]], "indicators": event["i"], "sequence_number": event["q"], "tape": event["z"]}
    if "trft" in event:
        result["trf_timestamp"] = event["trft"] * 1_000_000 + 45
    return result


def holiday_rows(date_str: str, name: str, status: str = "closed",
                 open_iso: str | None = None, close_iso: str | None = None) -> list[dict]:
    """/v1/marketstatus/upcoming rows for one day: Polygon returns one per exchange."""
    rows = []
    for exchange in ("NYSE", "NASDAQ", "OTC"):
        row = {"date": date_str, "exchange": exchange, "name": name, "status": status}
        if open_iso is not None:
            row["open"] = open_iso
        if close_iso is not None:
            row["close"] = close_iso
        rows.append(row)
    return rows


def _status(status: str, message: str) -> dict:
    return {"ev": "status", "status": status, "message": message}


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _parse_bound(text: str, end: bool) -> int:
    """ms epoch, or YYYY-MM-DD meaning the whole America/New_York day."""
    if text.isdigit():
        return int(text)
    day = date.fromisoformat(text)
    if end:  # last millisecond of the day, DST-aware
        day += timedelta(days=1)
    midnight = _ms(datetime(day.year, day.month, day.day, tzinfo=NEW_YORK))
    return midnight - 1 if end else midnight


def _aggs_result(bar: dict) -> dict:
    """A bar as /v2/aggs answers it: every field Polygon documents (`n` transactions, `otc` when true)."""
    result = {"v": bar["v"], "vw": bar["vw"], "o": bar["o"], "c": bar["c"], "h": bar["h"], "l": bar["l"],
              "t": bar["s"], "n": bar.get("n", 1)}
    if bar.get("otc"):
        result["otc"] = True
    return result
