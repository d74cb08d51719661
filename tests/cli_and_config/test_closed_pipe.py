"""A reader that stops early (`status --json | head`) ends a command quietly (issue 18: it ended in a
BrokenPipeError traceback). The pipe's read end is closed before the command writes, as `head -0` does."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from test_check_plugin import healthy_config

READER_GONE = 141   # what a shell reports for a command killed by SIGPIPE


def run_into_closed_pipe(args: list[str], config) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "spy_streamer", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "SPY_STREAMER_CONFIG": str(config)})
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["status", "--json"], ["status"], ["report"], ["--help"], ["--version"],
                                  ["report", "--help"], ["check", "--help"], ["check", "-V"]])
def test_a_reader_gone_early_ends_the_command_without_a_traceback(tmp_path, args):
    result = run_into_closed_pipe(args, healthy_config(tmp_path))
    assert result.stderr == "" and result.returncode == READER_GONE


@pytest.mark.parametrize("args, code", [(["check"], 0), (["check", "--probe"], 0), (["check", "--bogus"], 3),
                                        (["check", "--probe", "--bogus"], 1)])
def test_check_keeps_its_verdicts_exit_code_when_nobody_reads_its_line(tmp_path, args, code):
    result = run_into_closed_pipe(args, healthy_config(tmp_path))
    assert result.stderr == "" and result.returncode == code
