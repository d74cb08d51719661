"""Refilling what the socket missed: the gap ledger and the REST backfiller."""
