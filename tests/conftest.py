"""Shared fixtures. Tests that need the real clips in ``../shared`` (beside the checkout) skip when it is absent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HYPERLIPS_SHARED", ROOT.parent / "shared"))


def pytest_configure(config):
    """Under pytest-xdist, each worker process gets its share of the cores for torch and the processes it starts."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        share = str(max(1, (os.cpu_count() or 1) // int(workers)))
        os.environ.setdefault("OMP_NUM_THREADS", share)
        os.environ.setdefault("MKL_NUM_THREADS", share)


TEMP_NEEDED_GB = 10  # the suite's temporary folder peaked at 6.2 GB in a whole run (docs/testing.md)


def temp_space_line(folder: str, free_bytes: int) -> str:
    """The report header's line on the temporary folder's free space: a warning below ``TEMP_NEEDED_GB``."""
    free = free_bytes / 1e9
    if free < TEMP_NEEDED_GB:
        return (f"WARNING: {free:.1f} GB free in the temporary folder {folder}; the suite needs about "
                f"{TEMP_NEEDED_GB} GB (the training tests write checkpoints of full-size networks) and those tests "
                f"would fail with 'No space left on device': free some space or point TMPDIR elsewhere")
    return f"temporary folder {folder}: {free:.1f} GB free"


def pytest_report_header(config):
    """Say how much room the temporary folder has: a full disk otherwise shows only as failed training tests."""
    import shutil
    import tempfile

    folder = str(config.option.basetemp or tempfile.gettempdir())
    try:
        free = shutil.disk_usage(folder if os.path.isdir(folder) else tempfile.gettempdir()).free
    except OSError:
        return None
    return temp_space_line(folder, free)


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


# ---------------------------------------------------------------------------------------------- trained expert
GRID_S1_TRAINED = 40  # the first 40 GRID s1 clips (by name): 32 to train the expert on, 8 held out by the split
EXPERT_STEPS = {"bf16": 500, "off": 300}  # steps per precision: both train in about 6 minutes on 2 cores


@dataclass
class TrainedExpert:
    """A sync expert trained by the default test run on one speaker (GRID s1), shared by the tests that need one."""

    model: Path  # the exported model (BatchNorm statistics re-estimated, as `sync` and `train base` load it)
    dataset: Path  # the preprocessed 40 clips: manifest splits "train" (32) and "val" (8)
    run: Path
    amp: str  # "bf16" where the CPU has bf16 instructions, else "off" (fp32): hyperlips.precision decides
    steps: int
    clips: tuple[str, ...]  # file names of the GRID s1 clips it was trained or validated on
    records: list  # scalars.jsonl of the run


@pytest.fixture(scope="session")
def trained_expert(more_data, tmp_path_factory) -> TrainedExpert:
    """Train the sync expert briefly on 32 GRID s1 clips (16 pairs per step, lr 1e-3, negatives 8+ frames away).

    The precision follows the CPU (``hyperlips.precision.auto_precision``): bf16 autocast where it is native,
    fp32 where bf16 would be emulated (several times slower). ``HYPERLIPS_SYNC_TEST_STEPS`` overrides the steps.
    """
    import json

    from hyperlips.data.preprocess import PreprocessOptions, preprocess
    from hyperlips.precision import auto_precision
    from hyperlips.train.commands import stage_class
    from hyperlips.train.config import build_config
    from hyperlips.train.loop import Trainer

    base = tmp_path_factory.mktemp("trained_expert")
    src = base / "src"
    src.mkdir()
    clips = sorted((more_data / "grid_s1").glob("*.mpg"))[:GRID_S1_TRAINED]
    for p in clips:
        os.symlink(p, src / p.name)
    preprocess(src, base / "ds", PreprocessOptions(val_fraction=0.2), workers=2, progress=False)
    # HYPERLIPS_TEST_CPU_FLAGS judges other CPU flags than this machine's, to rehearse another machine: e.g.
    # "avx2" with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 behaves like a CPU without bf16 instructions
    flags = os.environ.get("HYPERLIPS_TEST_CPU_FLAGS")
    amp = "bf16" if auto_precision("cpu", None if flags is None else flags.split()) == "bf16" else "off"
    steps = int(os.environ.get("HYPERLIPS_SYNC_TEST_STEPS", EXPERT_STEPS[amp]))
    cfg = build_config("sync", overrides=dict(
        data=str(base / "ds"), out=str(base / "run"), lr=1e-3, batch_size=16, workers=1, threads=2,
        amp=amp, min_shift=8, max_steps=steps, val_every=100, val_samples=128, val_at_start=True,
        ckpt_every=10_000, image_every=0, log_every=50))
    res = Trainer(stage_class("sync"), cfg, quiet=True).fit()
    records = [json.loads(line) for line in (base / "run/scalars.jsonl").read_text().splitlines()]
    return TrainedExpert(res.model, base / "ds", base / "run", amp, steps, tuple(p.name for p in clips), records)
