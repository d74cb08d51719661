"""From the queue to durable rows: queue items, the writer, dedup keys and the pipeline's counters."""
