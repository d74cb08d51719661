"""Configuration: the YAML file of the README's configuration reference, validated once into frozen dataclasses.

Every problem (missing file, unknown key, wrong type, bad value) becomes one `ConfigError` that names the
file and the dotted key, so the CLI can print one line and exit 78 (EX_CONFIG) without a traceback.

The file is untrusted text read by an unattended daemon, so the reader (`config_file.py`) is strict
before it is clever: at most 1 MB, UTF-8, no YAML anchors or aliases, no duplicate keys; here, only
finite numbers in sane ranges. A value shown in a message is cut short, and `api_key_env` is never echoed: people paste
the key there.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config_file import ConfigError, key_text, shown, read_config_document  # noqa: F401 (ConfigError: the API)

DEFAULT_CONFIG_PATH = Path("config/settings.yaml")
CONFIG_PATH_ENV = "SPY_STREAMER_CONFIG"
# Seconds, inclusive. Below the minimums a loop spins and floods the log; above the maximums an alert or a
# flush would come so late that it is surely a typo (and `.inf` crashes `Event.wait`).
HEARTBEAT_INTERVAL_RANGE = (0.05, 3600.0)
ALERT_THRESHOLD_RANGE = (1.0, 86400.0)
WRITE_INTERVAL_RANGE = (0.05, 3600.0)
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


@dataclass(frozen=True)
class PolygonConfig:
    api_key_env: str
    ws_feed: str
    ws_secure: bool
    rest_base_url: str
    subscriptions: tuple[str, ...]
    rest_max_requests_per_second: float = 20.0   # the gap backfill's cap (a wildcard may have thousands)


@dataclass(frozen=True)
class MarketHoursConfig:
    timezone: ZoneInfo
    active_days: frozenset[int]
    start_time: time
    end_time: time
    holiday_rules: str = "XNYS"   # exchange_rules.RULE_SETS: "XNYS" (NYSE holidays, early closes) or "none"
    extended_hours: bool = False  # also pre-market (from 04:00 New York) and after-hours (to 20:00)


@dataclass(frozen=True)
class MonitoringConfig:
    heartbeat_interval_seconds: float
    alert_threshold_seconds: float
    metrics_port: int | None = None      # Prometheus /metrics over HTTP; the textfile is always written
    metrics_address: str = "127.0.0.1"   # where it listens: this host only unless an operator says otherwise


@dataclass(frozen=True)
class BatchingConfig:
    write_interval_seconds: float


@dataclass(frozen=True)
class PathsConfig:
    data_dir: Path
    heartbeat_dir: Path
    log_file: Path | None


@dataclass(frozen=True)
class StorageConfig:
    kind: str = "parquet"               # "parquet": the local layout; "iceberg": staged there, committed to the lake
    catalog: str = "sql"                # "sql" (SQLite file in data_dir), a SQLAlchemy URI, or a REST catalog URI
    warehouse: str = "var/lake"         # an absolute local path or s3://bucket/prefix
    s3_endpoint: str | None = None      # an S3-compatible store (MinIO, Ceph, R2)


@dataclass(frozen=True)
class Config:
    polygon: PolygonConfig
    market_hours: MarketHoursConfig
    monitoring: MonitoringConfig
    batching: BatchingConfig
    paths: PathsConfig
    source: Path
    storage: StorageConfig = StorageConfig()


# --- value parsers: each takes the raw YAML value and returns the typed one or raises ValueError ---

def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {shown(value)}")
    return value.strip()


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {shown(value)}")
    return value


def _seconds_between(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        # bool is an int subclass and `true` is never an interval; comparing before float() keeps a huge
        # int from overflowing, and `low <= nan` is false, so nan and the infinities fail here too.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"expected a number of seconds from {low:g} to {high:g}, got {shown(value)}")
        return float(value)
    return parse


def _env_name(value: Any) -> str:
    """The *name* of the variable that holds the key. Anything else may be the key itself: never echo it."""
    if not isinstance(value, str) or not ENV_NAME.fullmatch(value.strip()) or _looks_like_key(value.strip()):
        raise ValueError("expected the name of an environment variable such as POLYGON_API_KEY "
                         "(capitals, digits, _), not the key itself; the value is not shown")
    return value.strip()


def _looks_like_key(name: str) -> bool:
    # Polygon keys are long runs of letters and digits; variable names have words split by underscores.
    return len(name) >= 20 and "_" not in name and any(char.isdigit() for char in name)


def _clock_time(value: Any) -> time:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{2}:[0-9]{2}", value):
        raise ValueError(f"expected a time as \"HH:MM\", got {shown(value)}")
    hours, minutes = (int(part) for part in value.split(":"))
    if hours > 23 or minutes > 59:
        raise ValueError(f"not a time of day: {shown(value)}")
    return time(hours, minutes)


def _timezone(value: Any) -> ZoneInfo:
    name = _string(value)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, a name too long
        raise ValueError(f"unknown timezone {shown(name)}") from None


def _one_of(value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {shown(value)}")
    return value


def _weekdays(value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of weekdays 0-6 (Monday = 0), got {shown(value)}")
    for day in value:
        if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
            raise ValueError(f"expected weekdays 0-6 (Monday = 0), got {shown(day)}")
    return frozenset(value)


def _subscriptions(value: Any) -> tuple[str, ...]:
    from .channels import NAMES  # the registry is the one list of what can be recorded (no pyarrow import)
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list like [\"A.SPY\"], got {shown(value)}")
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(r"[A-Z]+\.(\*|[A-Z0-9][A-Za-z0-9.:-]*)", item):
            raise ValueError(f"expected channel.symbol like \"A.SPY\" or a wildcard \"A.*\", got {shown(item)}")
        if item.split(".", 1)[0] not in NAMES:
            raise ValueError(f"channel of {shown(item)} is not supported; supported: {', '.join(NAMES)}")
    return tuple(dict.fromkeys(value))


def _requests_per_second(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= value <= 1000:
        raise ValueError(f"expected requests per second, 0.1-1000, got {shown(value)}")
    return float(value)


# A query parameter whose name holds one of these (case and `-`/`_` ignored) carries a credential.
CREDENTIAL_WORDS = ("key", "token", "password", "passwd", "pwd", "secret", "credential", "signature", "sig", "auth")


def _url_shown(value: Any) -> str:
    """A URL for a message without what may be secret: its user:password@ part and its query or fragment."""
    if not isinstance(value, str):
        return shown(value)
    base = re.split(r"[?#]", value, maxsplit=1)[0]
    hidden = "?…" if len(base) < len(value) else ""
    start = base.find("://") + 3 if "://" in base else 0
    if base.rfind("@") >= start:
        base = base[:start] + "…" + base[base.rfind("@"):]
    return shown(base + hidden)


def _refuse_credentials(text: str) -> None:
    """ValueError naming where a credential sits in a URL, never its value: a config file is read, copied
    and pasted by many; the secrets come from the environment (or a profile), as the README says."""
    parts = urlsplit(text if "://" in text else f"//{text}")
    if "@" in parts.netloc:
        raise ValueError("holds credentials in its user:password@ part; give them through the environment "
                         "(or a profile), never in the config file")
    for name, _ in parse_qsl(f"{parts.query}&{parts.fragment}", keep_blank_values=True):
        if any(word in re.sub(r"[-_]", "", name.lower()) for word in CREDENTIAL_WORDS):
            raise ValueError(f"holds a credential in its query parameter {shown(name)}; give it through the "
                             f"environment (or a profile), never in the config file")


def _without_credentials(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`parse` for a key holding a URL, refusing first any credential inside it."""
    def parser(value: Any) -> Any:
        if isinstance(value, str):
            _refuse_credentials(value.strip())
        return parse(value)
    return parser


def _ip_address(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(_string(value)))
    except ValueError:
        raise ValueError(f"expected an IP address to listen on (127.0.0.1, ::1, 0.0.0.0 for every interface), "
                         f"got {shown(value)}") from None


def _base_url(value: Any) -> str:
    """An http(s) origin: the REST client sends the key to whatever this names."""
    text = _string(value).rstrip("/")
    parts = urlsplit(text)
    try:
        parts.port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None \
            or parts.path or parts.query or parts.fragment:
        raise ValueError(f"expected an origin like \"https://api.polygon.io\", got {_url_shown(value)}")
    return text


def _optional_port(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a TCP port 1-65535 (or null: off), got {shown(value)}")
    return value


def _path(value: Any) -> Path:
    # Relative for now: load_config() anchors it to the config file's folder (_anchored).
    text = _string(value)
    if "\0" in text:
        raise ValueError("a path cannot contain a NUL character")
    return Path(text).expanduser()


def _optional_path(value: Any) -> Path | None:
    return None if value is None else _path(value)


def _catalog(value: Any) -> str:
    text = _string(value)
    if text == "sql" or text.startswith(("sqlite:///", "postgresql://", "postgresql+")):
        return text
    parts = urlsplit(text)
    if parts.scheme in ("http", "https") and parts.hostname:
        return text.rstrip("/")
    raise ValueError(f"expected sql, a SQLAlchemy URI (sqlite:///..., postgresql://...) or a REST catalog URI "
                     f"(https://...), got {_url_shown(value)}")


def _warehouse(value: Any) -> str:
    text = _string(value)
    if text.startswith(("s3://", "s3a://")):
        if not text.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(f"expected s3://bucket/prefix, got {_url_shown(value)}")
        return text.rstrip("/")
    if "://" in text:
        raise ValueError(f"expected a local path or s3://bucket/prefix, got {_url_shown(value)}")
    return str(_path(text))   # load_config() anchors a relative one, as it does `paths`


def _optional_endpoint(value: Any) -> str | None:
    if value is None:
        return None
    parts = urlsplit(_string(value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an endpoint URL like \"http://minio:9000\" (or null), got {_url_shown(value)}")
    return _string(value).rstrip("/")


# The schema mirrors the YAML: nested dicts of sections, leaves are (parser, default).
SCHEMA: dict[str, Any] = {
    "polygon": {
        "api_key_env": (_env_name, "POLYGON_API_KEY"),
        "ws_feed": (_without_credentials(_string), "socket.polygon.io"),
        "ws_secure": (_boolean, True),
        "rest_base_url": (_without_credentials(_base_url), "https://api.polygon.io"),
        "subscriptions": (_subscriptions, ["A.SPY"]),
        "rest_max_requests_per_second": (_requests_per_second, 20),
    },
    "streaming": {
        "market_hours": {
            "timezone": (_timezone, "America/New_York"),
            "active_days": (_weekdays, [0, 1, 2, 3, 4]),
            "start_time": (_clock_time, "09:30"),
            "end_time": (_clock_time, "16:00"),
            "holiday_rules": (lambda value: _one_of(value, ("XNYS", "none")), "XNYS"),
            "extended_hours": (_boolean, False),
        },
        "monitoring": {
            "heartbeat_interval_seconds": (_seconds_between(*HEARTBEAT_INTERVAL_RANGE), 300),
            "alert_threshold_seconds": (_seconds_between(*ALERT_THRESHOLD_RANGE), 900),
            "metrics_port": (_optional_port, None),
            "metrics_address": (_ip_address, "127.0.0.1"),
        },
        "batching": {
            "write_interval_seconds": (_seconds_between(*WRITE_INTERVAL_RANGE), 30),
        },
    },
    "paths": {
        "data_dir": (_path, "var/data"),
        "heartbeat_dir": (_path, "var/heartbeat"),
        "log_file": (_optional_path, "var/log/spy_streamer.log"),
    },
    "storage": {
        "kind": (lambda value: _one_of(value, ("parquet", "iceberg")), "parquet"),
        "catalog": (_without_credentials(_catalog), "sql"),
        "warehouse": (_without_credentials(_warehouse), "var/lake"),
        "s3_endpoint": (_without_credentials(_optional_endpoint), None),
    },
}


def resolve_config_path(cli_path: str | None) -> Path:
    """`--config`, else $SPY_STREAMER_CONFIG, else config/settings.yaml."""
    return Path(cli_path or os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: Path) -> Config:
    raw = read_config_document(path)
    values = _anchored(_parse_section(SCHEMA, raw, prefix="", source=path), path)
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
        storage=StorageConfig(**values["storage"]),
    )


def config_folder(path: Path) -> Path:
    """The folder relative paths in the file at `path` start from, symlinks resolved once (so `..` means
    what the kernel would make of it)."""
    return path.absolute().parent.resolve()


def _anchored(values: dict, path: Path) -> dict:
    """Relative paths (defaults too) made absolute from the config file's folder, as nginx, supervisord and
    most daemons do: the daemon and every command then agree from any working directory (NRPE and cron
    run `check` from `/`), and a later chdir cannot move the output."""
    folder = config_folder(path)

    def anchor(value: Path | None) -> Path | None:
        return None if value is None else Path(os.path.normpath(folder / value))

    values["paths"] = {key: anchor(value) for key, value in values["paths"].items()}
    warehouse = values["storage"]["warehouse"]
    if "://" not in warehouse:
        values["storage"]["warehouse"] = str(anchor(Path(warehouse)))
    return values


def require_api_key(config: Config) -> str:
    """The API key from the environment variable the config names; never from the file."""
    key = os.environ.get(config.polygon.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"{config.source}: polygon.api_key_env: environment variable "
            f"{config.polygon.api_key_env} is not set (it must hold your Polygon API key; to try it without a key: scripts/run_streamer.sh --demo)"
        )
    return key


def _parse_section(schema: dict, raw: Any, prefix: str, source: Path) -> dict:
    section_name = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {section_name}: expected a mapping, got {shown(raw)}")
    unknown = sorted(set(raw) - set(schema), key=str)
    if unknown:
        raise ConfigError(f"{source}: {prefix}{key_text(unknown[0])}: unknown key")
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
