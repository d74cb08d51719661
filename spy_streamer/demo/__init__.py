"""The demo: the real daemon against the bundled Polygon replay server (also the tests' fake)."""
