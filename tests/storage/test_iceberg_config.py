"""The storage.* keys of DESIGN.md: the local layout by default, the lake when asked, bad values refused."""
from __future__ import annotations

import pytest
import yaml

from conftest import settings
from spy_streamer.config import ConfigError, load_config
from spy_streamer.storage.lake_catalog import CATALOG_FILE, catalog_properties, location_of


def _load(tmp_path, **storage):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings(tmp_path, storage=storage) if storage else settings(tmp_path)))
    return load_config(path)


def test_the_local_layout_is_the_default(tmp_path):
    storage = _load(tmp_path).storage
    assert (storage.kind, storage.catalog, storage.s3_endpoint) == ("parquet", "sql", None)
    properties = catalog_properties(location_of(_load(tmp_path)), tmp_path / "data")
    assert properties["type"] == "sql" and properties["uri"].endswith(f"/data/{CATALOG_FILE}")
    assert properties["warehouse"].startswith("file:///")


def test_an_s3_warehouse_with_an_endpoint_and_a_rest_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("SPY_STREAMER_CATALOG_TOKEN", "t0ken")
    config = _load(tmp_path, kind="iceberg", catalog="https://catalog.example:8181/", warehouse="s3a://lake/spy/",
                   s3_endpoint="http://minio:9000")
    assert (config.storage.kind, config.storage.warehouse) == ("iceberg", "s3a://lake/spy")
    properties = catalog_properties(location_of(config), config.paths.data_dir)
    assert properties["type"] == "rest" and properties["uri"] == "https://catalog.example:8181"
    assert properties["warehouse"] == "s3://lake/spy" and properties["s3.endpoint"] == "http://minio:9000"
    assert properties["token"] == "t0ken"


@pytest.mark.parametrize("key, value", [("kind", "delta"), ("catalog", "hive"), ("warehouse", "gs://b/p"),
                                        ("warehouse", "s3:///prefix"), ("s3_endpoint", "minio:9000"),
                                        ("s3_endpoint", 9000), ("region", "us-east-1")])
def test_bad_storage_values_name_their_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"storage.{key}"):
        _load(tmp_path, **{key: value})
