"""Configuration: the YAML file of DESIGN.md, validated once into frozen dataclasses.

Every problem (missing file, unknown key, wrong type, bad value) becomes one `ConfigError` that names the
file and the dotted key, so the CLI can print one line and exit 78 (EX_CONFIG) without a traceback.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

DEFAULT_CONFIG_PATH = Path("config/settings.yaml")
CONFIG_PATH_ENV = "SPY_STREAMER_CONFIG"


class ConfigError(Exception):
    """A configuration problem a person must fix; the message names the file and the key."""


@dataclass(frozen=True)
class PolygonConfig:
    api_key_env: str
    ws_feed: str
    ws_secure: bool
    rest_base_url: str
    subscriptions: tuple[str, ...]


@dataclass(frozen=True)
class MarketHoursConfig:
    timezone: ZoneInfo
    active_days: frozenset[int]
    start_time: time
    end_time: time
    holiday_rules: str = "XNYS"   # exchange_rules.RULE_SETS: "XNYS" (NYSE holidays, early closes) or "none"


@dataclass(frozen=True)
class MonitoringConfig:
    heartbeat_interval_seconds: float
    alert_threshold_seconds: float


@dataclass(frozen=True)
class BatchingConfig:
    write_interval_seconds: float


@dataclass(frozen=True)
class PathsConfig:
    data_dir: Path
    heartbeat_dir: Path
    log_file: Path | None


@dataclass(frozen=True)
class Config:
    polygon: PolygonConfig
    market_hours: MarketHoursConfig
    monitoring: MonitoringConfig
    batching: BatchingConfig
    paths: PathsConfig
    source: Path


# --- value parsers: each takes the raw YAML value and returns the typed one or raises ValueError ---

def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _positive_seconds(value: Any) -> float:
    # bool is an int subclass; `true` is never a sensible interval.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return float(value)


def _clock_time(value: Any) -> time:
    if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}", value):
        raise ValueError(f"expected a time as \"HH:MM\", got {value!r}")
    hours, minutes = (int(part) for part in value.split(":"))
    if hours > 23 or minutes > 59:
        raise ValueError(f"not a time of day: {value!r}")
    return time(hours, minutes)


def _timezone(value: Any) -> ZoneInfo:
    name = _string(value)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}") from None


def _one_of(value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _weekdays(value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of weekdays 0-6 (Monday = 0), got {value!r}")
    for day in value:
        if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
            raise ValueError(f"expected weekdays 0-6 (Monday = 0), got {day!r}")
    return frozenset(value)


def _subscriptions(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list like [\"A.SPY\"], got {value!r}")
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(r"[A-Z]+\.[A-Za-z0-9.*:]+", item):
            raise ValueError(f"expected channel.symbol like \"A.SPY\", got {item!r}")
    return tuple(value)


def _path(value: Any) -> Path:
    # Resolved once, so a later chdir cannot move the output.
    return Path(_string(value)).expanduser().absolute()


def _optional_path(value: Any) -> Path | None:
    return None if value is None else _path(value)


# The schema mirrors the YAML: nested dicts of sections, leaves are (parser, default).
SCHEMA: dict[str, Any] = {
    "polygon": {
        "api_key_env": (_string, "POLYGON_API_KEY"),
        "ws_feed": (_string, "socket.polygon.io"),
        "ws_secure": (_boolean, True),
        "rest_base_url": (_string, "https://api.polygon.io"),
        "subscriptions": (_subscriptions, ["A.SPY"]),
    },
    "streaming": {
        "market_hours": {
            "timezone": (_timezone, "America/New_York"),
            "active_days": (_weekdays, [0, 1, 2, 3, 4]),
            "start_time": (_clock_time, "09:30"),
            "end_time": (_clock_time, "16:00"),
            "holiday_rules": (lambda value: _one_of(value, ("XNYS", "none")), "XNYS"),
        },
        "monitoring": {
            "heartbeat_interval_seconds": (_positive_seconds, 300),
            "alert_threshold_seconds": (_positive_seconds, 900),
        },
        "batching": {
            "write_interval_seconds": (_positive_seconds, 30),
        },
    },
    "paths": {
        "data_dir": (_path, "var/data"),
        "heartbeat_dir": (_path, "var/heartbeat"),
        "log_file": (_optional_path, "var/log/spy_streamer.log"),
    },
}


def resolve_config_path(cli_path: str | None) -> Path:
    """`--config`, else $SPY_STREAMER_CONFIG, else config/settings.yaml."""
    return Path(cli_path or os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: Path) -> Config:
    raw = _read_yaml(path)
    values = _parse_section(SCHEMA, raw, prefix="", source=path)
    hours = values["streaming"]["market_hours"]
    if hours["end_time"] <= hours["start_time"]:
        raise ConfigError(f"{path}: streaming.market_hours.end_time: must be later than start_time")
    return Config(
        polygon=PolygonConfig(**values["polygon"]),
        market_hours=MarketHoursConfig(**hours),
        monitoring=MonitoringConfig(**values["streaming"]["monitoring"]),
        batching=BatchingConfig(**values["streaming"]["batching"]),
        paths=PathsConfig(**values["paths"]),
        source=path,
    )


def require_api_key(config: Config) -> str:
    """The API key from the environment variable the config names; never from the file."""
    key = os.environ.get(config.polygon.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"{config.source}: polygon.api_key_env: environment variable "
            f"{config.polygon.api_key_env} is not set (it must hold your Polygon API key)"
        )
    return key


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _parse_section(schema: dict, raw: Any, prefix: str, source: Path) -> dict:
    section_name = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {section_name}: expected a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(schema), key=str)
    if unknown:
        raise ConfigError(f"{source}: {prefix}{unknown[0]}: unknown key")
    parsed = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            parsed[key] = _parse_section(spec, raw.get(key, {}), f"{prefix}{key}.", source)
        else:
            parsed[key] = _parse_leaf(spec, raw, key, f"{prefix}{key}", source)
    return parsed


def _parse_leaf(spec: tuple[Callable[[Any], Any], Any], raw: dict, key: str, dotted: str, source: Path) -> Any:
    parser, default = spec
    try:
        return parser(raw.get(key, default))
    except ValueError as exc:
        raise ConfigError(f"{source}: {dotted}: {exc}") from None
