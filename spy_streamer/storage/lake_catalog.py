"""The Iceberg catalog and warehouse named by the `storage.*` keys, built without any I/O of our own.

- `catalog: sql` (the default): a SQLite file beside the staging area, `<data_dir>/lake-catalog.db`; the
  catalog of one machine. Any other SQLAlchemy URI (`sqlite:///...`, `postgresql://...`) is a SQL catalog
  at that URI; an `http(s)://` URI is a REST catalog (Polaris, Nessie, Gravitino, Lakekeeper, Unity...),
  the catalog of a shared deployment. A REST token or client credential comes from the environment
  (SPY_STREAMER_CATALOG_TOKEN, SPY_STREAMER_CATALOG_CREDENTIAL as `client_id:secret`), never the file.
- `warehouse`: a local path or `s3://bucket/prefix`. S3 goes through pyarrow's own S3 filesystem (no
  s3fs); credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
  AWS_SESSION_TOKEN, a profile, an instance role), the region from AWS_REGION or AWS_DEFAULT_REGION, and
  `s3_endpoint` points it at an S3-compatible store (MinIO, Ceph, R2, moto in the tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NAMESPACE = "spy_streamer"
# A SQL catalog keys its tables by catalog name: every writer and reader must open it under this one.
CATALOG_NAME = "spy_streamer"
CATALOG_FILE = "lake-catalog.db"
TOKEN_ENV, CREDENTIAL_ENV = "SPY_STREAMER_CATALOG_TOKEN", "SPY_STREAMER_CATALOG_CREDENTIAL"
# A store or catalog that is down must fail a call within 10 s (the committer backs off and retries), not
# hang the thread for the AWS SDK's minutes: lake_bounds.py, loaded by pyiceberg by these names.
S3_CONNECT_TIMEOUT_SECONDS = 3
S3_REQUEST_TIMEOUT_SECONDS = 3     # without a byte; lake_bounds.S3_ATTEMPTS tries in all
BOUNDED_S3_RETRIES = "spy_streamer.storage.lake_bounds.BoundedS3Retries"
BOUNDED_REST_CATALOG = "spy_streamer.storage.lake_bounds.BoundedRestCatalog"


@dataclass(frozen=True)
class LakeLocation:
    """Where the tables live: what `storage.catalog`, `storage.warehouse` and `storage.s3_endpoint` say."""
    catalog: str = "sql"
    warehouse: str = "var/lake"
    s3_endpoint: str | None = None
    namespace: str = NAMESPACE


def is_remote(warehouse: str) -> bool:
    return warehouse.startswith(("s3://", "s3a://"))


def warehouse_uri(warehouse: str) -> str:
    """`s3a://` (Hadoop's spelling) as `s3://`; a local path as an absolute `file://` URI."""
    if is_remote(warehouse):
        return "s3://" + warehouse.split("://", 1)[1]
    return Path(warehouse).expanduser().absolute().as_uri()


def catalog_properties(location: LakeLocation, data_dir: Path) -> dict[str, str]:
    """The pyiceberg properties for `location` (also what a person passes to `load_catalog` to read)."""
    properties = {"warehouse": warehouse_uri(location.warehouse), "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO"}
    if is_remote(location.warehouse):
        properties.update({"s3.region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                           or "us-east-1",
                           "s3.connect-timeout": str(S3_CONNECT_TIMEOUT_SECONDS),
                           "s3.request-timeout": str(S3_REQUEST_TIMEOUT_SECONDS),
                           "s3.retry-strategy-impl": BOUNDED_S3_RETRIES})
        if location.s3_endpoint:
            properties["s3.endpoint"] = location.s3_endpoint
    kind = location.catalog
    if kind.startswith(("http://", "https://")):
        properties.update(type="rest", uri=kind)
        for env, key in ((TOKEN_ENV, "token"), (CREDENTIAL_ENV, "credential")):
            if os.environ.get(env):
                properties[key] = os.environ[env]
    else:
        uri = f"sqlite:///{data_dir.absolute() / CATALOG_FILE}" if kind == "sql" else kind
        properties.update(type="sql", uri=uri)
    return properties


def open_catalog(location: LakeLocation, data_dir: Path):
    """The pyiceberg Catalog for `location`; a local warehouse folder is created."""
    from pyiceberg.catalog import load_catalog  # the lake is optional: `pip install spy-streamer[lake]`

    if not is_remote(location.warehouse):
        Path(location.warehouse).expanduser().mkdir(parents=True, exist_ok=True)
    if location.catalog == "sql":
        data_dir.mkdir(parents=True, exist_ok=True)
    properties = catalog_properties(location, data_dir)
    if properties["type"] == "rest":   # the same catalog, its requests bounded
        del properties["type"]
        properties["py-catalog-impl"] = BOUNDED_REST_CATALOG
    return load_catalog(CATALOG_NAME, **properties)


LAKE_LIBRARIES = ("pyiceberg", "pyiceberg_core")   # the catalog and tables; the day partitioning of the tables
INSTALL_COMMAND = "pip install 'spy-streamer[lake]'"


def require_lake_libraries(config) -> None:
    """ConfigError (exit 78) naming the install command when a library the lake needs cannot be imported:
    without pyiceberg-core every commit failed, retried forever behind one WARNING."""
    from importlib import import_module

    from ..config import ConfigError
    for name in LAKE_LIBRARIES:
        try:
            import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{config.source}: storage.kind: iceberg needs {name.replace('_', '-')}, which "
                              f"cannot be imported ({exc}); install it with: {INSTALL_COMMAND}") from None


def location_of(config) -> LakeLocation:
    """The lake named by a loaded Config's `storage` section; ConfigError when its libraries are missing."""
    require_lake_libraries(config)
    storage = config.storage
    return LakeLocation(storage.catalog, storage.warehouse, storage.s3_endpoint)
