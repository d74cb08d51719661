"""One place that sets up logging: JSON lines with timestamp, level, logger, event and message.

Records carry a stable `event` name (`extra={"event": ...}`) so operators can grep and count them.
The file handler reopens its file when logrotate moves it away, and third-party loggers are held at
WARNING so WebSocket frames and the auth message can never reach the log.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

from .config import ConfigError

# Loggers of the libraries we drive. polygon-api-client names its loggers after its classes and gives
# them their own stdout handlers, which would bypass our format.
# urllib3 is held at ERROR: it warns once per retry, and the failed request is reported by our own line.
THIRD_PARTY_LEVELS = {"websockets": logging.WARNING, "asyncio": logging.WARNING, "polygon": logging.WARNING,
                      "WebSocketClient": logging.WARNING, "RESTClient": logging.WARNING,
                      "urllib3": logging.ERROR}
REDACTED = "***"


class _DefaultEvent(logging.Filter):
    """Records from code that does not name an event (libraries) still get an `event` field."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "event"):
            record.event = "log"
        return True


class _RedactingJsonFormatter(JsonFormatter):
    """Masks the API key wherever it would appear in a line, whatever put it there."""

    def __init__(self, secrets: tuple[str, ...]):
        super().__init__(
            "{levelname}{name}{event}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
        )
        self._secrets = tuple(secret for secret in secrets if secret)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for secret in self._secrets:
            line = line.replace(secret, REDACTED)
        return line


def _file_handler(log_file: Path) -> logging.Handler:
    """Creates a missing directory; one that cannot be created or written is a configuration error (exit 78),
    not a traceback and a restart loop."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # WatchedFileHandler notices when logrotate moved the file and reopens the path.
        return logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
    except OSError as exc:
        where = exc.filename or log_file
        raise ConfigError(f"paths.log_file: cannot write the log file {log_file} ({where}: "
                          f"{exc.strerror or exc})") from None


def configure_logging(log_file: Path | None, secrets: tuple[str, ...] = (), level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr) if log_file is None else _file_handler(log_file)
    handler.setFormatter(_RedactingJsonFormatter(secrets))
    handler.addFilter(_DefaultEvent())

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)

    for name, library_level in THIRD_PARTY_LEVELS.items():
        library_logger = logging.getLogger(name)
        library_logger.setLevel(library_level)
        for old in list(library_logger.handlers):
            library_logger.removeHandler(old)


def reopen_log_files() -> None:
    """SIGHUP: close the log file so the next line opens the path afresh (after a rotation that copied,
    or a move that WatchedFileHandler has not noticed yet)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = None   # emit() reopens a closed FileHandler on the next record
            finally:
                handler.release()


def discard_stdout() -> None:
    """After a BrokenPipeError on stdout (the reader left: `status --json | head`): point the descriptor at
    /dev/null, or Python's flush at exit fails again and prints "Exception ignored ... BrokenPipeError" (the
    recipe of Python's `signal` documentation)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
