"""The fake Polygon the tests use is the package's replay server (spy_streamer/demo/replay_server.py), which
the demo also runs; this module keeps `from fake_polygon import ...` working."""
from spy_streamer.demo.replay_events import *  # noqa: F401,F403
from spy_streamer.demo.replay_events import _chunks, _status, _timeline_iter  # noqa: F401
from spy_streamer.demo.replay_rest import *  # noqa: F401,F403
from spy_streamer.demo.replay_server import *  # noqa: F401,F403
