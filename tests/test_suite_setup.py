"""The suite's own set-up: a temporary folder too small for the training tests' checkpoints is warned of in the
report's header (a full disk otherwise shows only as failed training tests), and a passing test's folder goes."""

from __future__ import annotations

import tomllib
from pathlib import Path

from conftest import TEMP_NEEDED_GB, temp_space_line


def test_a_small_temporary_folder_is_warned_of():
    low = temp_space_line("/scratch", int((TEMP_NEEDED_GB - 0.5) * 1e9))
    assert low.startswith("WARNING: 9.5 GB free in the temporary folder /scratch") and "TMPDIR" in low, low
    plenty = temp_space_line("/scratch", int(50e9))
    assert plenty == "temporary folder /scratch: 50.0 GB free"


def test_passing_tests_leave_no_folders_behind():
    """The training tests write checkpoints of full-size networks (over 20 GB in a run): pytest removes a passing
    test's temporary folder at once and keeps only the last run's failed ones."""
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    options = config["tool"]["pytest"]["ini_options"]
    assert options["tmp_path_retention_policy"] == "failed" and options["tmp_path_retention_count"] == 1

