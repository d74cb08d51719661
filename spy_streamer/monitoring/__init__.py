"""What an operator sees: the heartbeat, `check`, Prometheus metrics and clock skew."""
