"""Every path and file name the daemon and its commands use: built here, parsed here, nowhere else.

Data (hive layout, one partition per channel and day, readable by every engine):
    <data_dir>/<channel>/date=YYYY-MM-DD/part-<ns>-<pid>-<seq>.parquet   a flush's micro-batch
    <data_dir>/<channel>/date=YYYY-MM-DD/day-YYYY-MM-DD.parquet          the day, once compacted
Bookkeeping, outside the data partitions (every engine scans `<data_dir>/<channel>/` as pure data):
    <data_dir>/.spy-streamer.lock                                      one daemon per data folder
    <data_dir>/.gaps/<channel>/date=YYYY-MM-DD.json                    the day's gap ledger
    <data_dir>/.set-aside/<channel>/date=YYYY-MM-DD/.<name>.corrupt    an unreadable file, moved aside
    <heartbeat_dir>/polygon.json, calendar.json, spy_streamer.prom      heartbeat, calendar cache, metrics

Names starting with "." or "_" are hidden: pyarrow's dataset reader skips them, so temporaries, files set
aside and spill folders never reach a reader. The commit order of the lake is the stamp in a micro-batch's
name, so the name is built and parsed by the same two functions below.
"""
from __future__ import annotations

import re
import stat
from datetime import date
from pathlib import Path

PARTITION_PREFIX = "date="
LOCK_FILE_NAME = ".spy-streamer.lock"
GAP_LEDGER_FOLDER = ".gaps"
LEGACY_GAP_LEDGER_NAME = ".gaps.json"   # where the ledger lived before, inside the partition
HEARTBEAT_FILE_NAME = "polygon.json"
CALENDAR_FILE_NAME = "calendar.json"
METRICS_TEXTFILE_NAME = "spy_streamer.prom"
COMPACTION_SPILL_FOLDER = ".compaction-spill"
CORRUPT_SUFFIX = ".corrupt"
SET_ASIDE_FOLDER = ".set-aside"      # unreadable data files, kept for a person outside the partitions
_MICRO_BATCH = re.compile(r"part-(\d+)-\d+-\d+\.parquet")


def channel_dir(data_dir: Path, channel: str) -> Path:
    return data_dir / channel


def partition_dir(data_dir: Path, channel: str, day: date) -> Path:
    return channel_dir(data_dir, channel) / f"{PARTITION_PREFIX}{day.isoformat()}"


def partition_dirs(data_dir: Path) -> list[Path]:
    """Every channel's day folders, sorted."""
    return sorted(data_dir.glob(f"*/{PARTITION_PREFIX}*"))


def partition_day_text(folder: Path) -> str | None:
    """`YYYY-MM-DD` of a partition folder, None for any other folder."""
    name = folder.name
    return name[len(PARTITION_PREFIX):] if name.startswith(PARTITION_PREFIX) else None


def micro_batch_name(stamp_ns: int, pid: int, sequence: int) -> str:
    return f"part-{stamp_ns}-{pid}-{sequence:06d}.parquet"


def micro_batch_stamp(name: str) -> int | None:
    """The writer's nanosecond stamp in a micro-batch name (the lake's commit order); None otherwise."""
    match = _MICRO_BATCH.fullmatch(name)
    return int(match.group(1)) if match else None


def day_file_name(day: date) -> str:
    return f"day-{day.isoformat()}.parquet"


def is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def visible_parquet_files(folder: Path) -> list[Path]:
    """The files a reader sees: `*.parquet` regular files minus hidden names (temporaries, files set aside).
    A symlink or a FIFO there was never written by us: compaction would merge another file's rows (then
    delete the link), and opening a FIFO would hang a restart's read of the day."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob("*.parquet") if not is_hidden(path.name) and _is_plain_file(path))


def refused_parquet_entries(folder: Path) -> list[Path]:
    """`*.parquet` names in a data folder that are not regular files (symlinks, FIFOs): refused as data."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob("*.parquet") if not is_hidden(path.name) and not _is_plain_file(path))


def _is_plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)   # lstat: the entry itself, never a link's target
    except OSError:
        return False


def set_aside_name(path: Path) -> Path:
    """Where an unreadable file is moved for a person: never inside a data partition (Polars reads every
    file of a channel folder, hidden ones too), hidden, and not ending in `.parquet`. A partition's file
    goes to `<data_dir>/.set-aside/<channel>/date=YYYY-MM-DD/`; a bookkeeping file stays in its folder."""
    name = f".{path.name.lstrip('.')}{CORRUPT_SUFFIX}"
    if partition_day_text(path.parent) is None:
        return path.with_name(name)
    partition, channel, data_dir = path.parent, path.parent.parent, path.parent.parent.parent
    return data_dir / SET_ASIDE_FOLDER / channel.name / partition.name / name


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_FILE_NAME


def gap_ledger_path(data_dir: Path, channel: str, day: date) -> Path:
    return data_dir / GAP_LEDGER_FOLDER / channel / f"{PARTITION_PREFIX}{day.isoformat()}.json"


def legacy_gap_ledger_path(data_dir: Path, channel: str, day: date) -> Path:
    """The ledger's place in earlier releases (it stopped Polars scanning a channel folder): read once,
    its gaps carried into gap_ledger_path, then removed."""
    return partition_dir(data_dir, channel, day) / LEGACY_GAP_LEDGER_NAME


def heartbeat_path(heartbeat_dir: Path) -> Path:
    return heartbeat_dir / HEARTBEAT_FILE_NAME


def calendar_path(heartbeat_dir: Path) -> Path:
    return heartbeat_dir / CALENDAR_FILE_NAME


def metrics_textfile_path(heartbeat_dir: Path) -> Path:
    return heartbeat_dir / METRICS_TEXTFILE_NAME
