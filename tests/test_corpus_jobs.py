"""``preprocess``, ``train``, ``finetune`` and ``eval`` on bad folders, corrupt clips inside a dataset, missing
dataset files, unusable or full output folders and signals (``corpus.JOB_CASES``): exit code 2 (or the signal's),
one error line, no traceback, nothing left half-written. And a folder mixing good, variable-frame-rate, NaN-audio
and broken clips preprocesses into an aligned dataset with one warning per odd clip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from corpus import JOB_CASES, Case, assert_failure, assert_warnings, leftovers, run_case


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.slow else c for c in JOB_CASES],
                         ids=lambda c: c.id)
def test_job_corpus(case: Case, cli_runner, corpus_materials, tmp_path):
    res = run_case(case, cli_runner, corpus_materials, tmp_path)
    if case.rc != 0:
        assert_failure(case, res, tmp_path)
        if case.id.startswith("preprocess-") and (tmp_path / "ds" / "clips").is_dir():
            assert not leftovers(tmp_path / "ds"), leftovers(tmp_path / "ds")  # finished clips only
    else:
        assert res.rc == 0 and "Traceback" not in res.stderr and not res.errors, res.describe()
        assert_warnings(case, res)
        check_mixed_dataset(tmp_path / "ds", res.stdout)
    assert not leftovers(corpus_materials.root)
    print(f"{case.id}: {res.cpu_seconds:.1f} s CPU")


def check_mixed_dataset(ds, stdout: str) -> None:
    """The mixed folder: the broken clip skipped with its reason, the others aligned on constant-rate timelines."""
    from hyperlips.data.datasets import Clip, Manifest
    from hyperlips.data.preprocess import check_dataset

    assert "skipped carl/broken.mp4: unreadable" in stdout
    assert check_dataset(ds) == []
    m = Manifest.load(ds)
    assert {c["id"] for c in m.clips} == {"anna/a1", "anna/nan_audio", "ben/b1", "ben/vfr"}
    vfr = Clip(ds / "clips" / "ben" / "vfr")
    # 20 frames over 37/30 s plus the last frame's duration: 3/30 s gives 15 fps; MP4 muxers often store the
    # last frame with another duration (one 25 fps tick here), which the average rate (FFmpeg's) follows
    assert 15.0 - 1e-3 <= vfr.fps <= 20 / (37 / 30 + 1 / 30) and vfr.n_frames == 20
    assert np.allclose(vfr.times, np.arange(20) / vfr.fps)
    nan = Clip(ds / "clips" / "anna" / "nan_audio")
    assert np.isfinite(nan.mel).all()
    assert json.loads((ds / "skipped.json").read_text())[0]["source"] == "carl/broken.mp4"
