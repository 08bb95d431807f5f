"""Shared fixtures. Tests that need the real clips in ``../shared`` (beside the checkout) skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HYPERLIPS_SHARED", ROOT.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs the shared test data ({path} is absent; set HYPERLIPS_SHARED to its folder)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    return _need(SHARED / "compat")


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``shared/data/real``: hyperlips/ (video_i.mp4, audio_i.wav, official_result_i.mp4), retalking/, speech/."""
    return _need(SHARED / "data" / "real")


@pytest.fixture(scope="session")
def more_data() -> Path:
    return _need(SHARED / "data" / "more")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread (the suite shares two cores with other work)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def cli_runner():
    """Runs ``hyperlips`` command lines, each in a fresh process forked from one warm interpreter (corpus.Runner)."""
    from corpus import Runner

    runner = Runner()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def corpus_materials(real_data, more_data, tmp_path_factory):
    """The input corpus's files, built on first use from the shared clips (corpus.Materials)."""
    from corpus import Materials

    return Materials(tmp_path_factory.mktemp("corpus"), real_data, more_data)
