"""The one compiled part: the frame parser's C fast path (spy_streamer/channels/_frame_columns.c).

Optional: without a C compiler the install still succeeds, and the daemon parses with pyarrow's JSON
reader instead (the daemon at about half the speed; it says so in its log at start, and `status` shows it)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("spy_streamer.channels._frame_columns", ["spy_streamer/channels/_frame_columns.c"],
                             extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"], optional=True)])
