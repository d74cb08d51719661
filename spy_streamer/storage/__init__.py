"""Storage: where captured rows go past the writer's micro-batches.

The local hive-partitioned Parquet layout (`parquet_sink`, `compaction`) is the embedded default. With
`storage.kind: iceberg` that layout becomes a durable staging area, and the modules here move each staged
batch, once and in order, into an Apache Iceberg table per channel (`iceberg_committer`), keep the tables
compact (`iceberg_maintenance`) and build the catalog from the config (`lake_catalog`).
"""
