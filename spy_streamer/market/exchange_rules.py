"""The exchange's own calendar from rules: NYSE holidays and early closes, known without any network.

Source: the `holidays` package's NYSE financial calendar, category PUBLIC (closed all day) and HALF_DAY
(early close; each name says when: "Christmas Eve (markets close at 1:00pm)"). It carries the standing
rules (the day before Independence Day, the day after Thanksgiving, Christmas Eve) and the one-off
closures and early closes of the past (9/11, Hurricane Sandy, the national days of mourning up to
2025-01-09). It agrees with exchange_calendars' XNYS on every day of 2000-2030
(tests/test_calendar_rules.py keeps it so).

Why `holidays` and not exchange_calendars: measured on Python 3.11 after pyarrow and polygon-api-client are
loaded, `holidays` adds about 0.07 s of import time and 12 MB of peak RSS; exchange_calendars about 0.3 s
and 56 MB (it pulls in pandas), for a daemon whose steady RSS is about 115 MB. exchange_calendars stays
the test-only independent reference.

What rules cannot know (a closure declared a few days ahead, a changed early close) comes from
Polygon's upcoming list, which the calendar puts above these rules for the days it lists.
"""
from __future__ import annotations

import functools
import re
from datetime import date, datetime, time, timezone
from types import MappingProxyType
from typing import Callable, Mapping

import holidays
from holidays.constants import HALF_DAY, PUBLIC

from .special_days import EXCHANGE_TZ, SpecialDay

REGULAR_EARLY_CLOSE = time(13, 0)
_CLOSE_LABEL = re.compile(r"\s*\(markets close at (\d{1,2}):(\d{2})\s*([ap]m)\)", re.IGNORECASE)

RuleSet = Callable[[int], Mapping[date, SpecialDay]]


@functools.lru_cache(maxsize=64)
def nyse_special_days(year: int) -> Mapping[date, SpecialDay]:
    """NYSE's holidays and early closes of `year` (read-only; computed once per year, no I/O)."""
    days = {day: SpecialDay(day, name) for day, name in _nyse(year, PUBLIC).items()}
    for day, label in _nyse(year, HALF_DAY).items():
        days.setdefault(day, _early_close(day, label))
    return MappingProxyType(days)


def no_special_days(year: int) -> Mapping[date, SpecialDay]:
    return MappingProxyType({})


# `streaming.market_hours.holiday_rules` names one of these.
RULE_SETS: dict[str, RuleSet] = {"XNYS": nyse_special_days, "none": no_special_days}


def _nyse(year: int, category: str) -> dict[date, str]:
    return dict(holidays.financial_holidays("NYSE", years=year, categories=(category,), language="en_US"))


def _early_close(day: date, label: str) -> SpecialDay:
    """`label` names the closing time in New York; 13:00 (the standing rule) when it does not."""
    match = _CLOSE_LABEL.search(label)
    closes = REGULAR_EARLY_CLOSE
    if match:
        hour, minute, half = int(match[1]) % 12, int(match[2]), match[3].lower()
        closes = time(hour + (12 if half == "pm" else 0), minute)
    instant = datetime.combine(day, closes, tzinfo=EXCHANGE_TZ).astimezone(timezone.utc)
    return SpecialDay(day, _CLOSE_LABEL.sub("", label).strip() or label, close=instant)
