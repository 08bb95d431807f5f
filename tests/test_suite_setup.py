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



def test_the_install_script_stops_at_a_failing_pip_with_its_reason(tmp_path):
    """pip's failure was filtered away (`| grep ... || true`): the script went on and ended on an unrelated error
    (a mediapipe import), the reason (no av for this Python) scrolled past."""
    import shutil
    import stat
    import subprocess

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "scripts").mkdir()
    shutil.copy(root / "scripts" / "install.sh", tmp_path / "scripts" / "install.sh")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f"export PATH={bin_dir}:$PATH\n")
    fake = bin_dir / "python"  # a Python whose pip cannot find a package
    fake.write_text("#!/bin/bash\n"
                    "if [ \"$1\" = -c ]; then case \"$2\" in *version_info*|*'import torch'*) exit 0;; esac; exit 1; fi\n"
                    "if [ \"$1\" = -m ] && [ \"$2\" = pip ]; then\n"
                    "  echo 'ERROR: No matching distribution found for av>=18' >&2; exit 1; fi\n"
                    "exit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    res = subprocess.run(["bash", str(tmp_path / "scripts" / "install.sh")], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "No matching distribution found for av>=18" in out and "install failed: pip install -e .[dev]" in out, out
