"""The supervisor: the runner that owns the threads, and the capture session it opens and closes."""
