"""``hyperlips bench``: the table and JSON, skipped rows with reasons, the time budget, memory measurement."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli
from hyperlips.eval import bench as B


def test_bench_small_run_prints_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--sizes", "128", "--precisions", "fp32", "fp16", "--batch-sizes", "1", "--frames", "1",
                "--end-to-end", "--memory-seconds", "--devices", "cpu", "cuda", "--threads", "1", "--original-batch", "0",
                "-o", out, timeout=300)
    assert r.returncode == 0, r.stderr
    table = r.stdout
    assert "stage" in table and "ms/frame" in table and "peak MB" in table
    data = json.loads(out.read_text())
    from hyperlips.precision import cpu_has_native_bf16

    native = cpu_has_native_bf16()  # said beside the CPU: bf16 figures mean nothing without it
    assert data["machine"]["bf16_native"] is native
    assert (", bf16 native" if native else ", bf16 emulated (not used)") in table
    rows = data["rows"]
    by_stage = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    for stage in ("decode", "faces", "paste", "encode", "network"):
        assert stage in by_stage, stage
    for stage in ("decode", "faces", "paste", "encode"):
        row = by_stage[stage][0]
        assert row["status"] == "ok" and row["frames"] >= 1 and row["seconds"] >= 1.0  # timed in rounds, as below
        assert row["fps_low"] <= row["fps"] <= row["fps_high"]  # their median, within their range
        assert row["peak_mb"] >= row["delta_mb"]
    net = [x for x in by_stage["network"] if x["device"] == "cpu"]
    fp32 = [x for x in net if x["precision"] == "fp32"]
    assert all(x["status"] == "ok" and x["fps"] > 0 and x["size"] == 128 for x in fp32)
    from hyperlips.eval.bench_stages import NETWORK_MIN_SECONDS

    assert all(x["seconds"] >= NETWORK_MIN_SECONDS and x["frames"] > 1 for x in fp32)  # not a few ms of noise
    assert all(x["fps_low"] <= x["fps"] <= x["fps_high"] for x in fp32)  # the median of its rounds
    # side by side: the reference (the original's layout), then Base and Lite as sync runs them
    assert [x["variant"] for x in fp32] == ["reference: original layout (Base, NCHW)", "Base, channels-last",
                                           "Lite, channels-last"]
    fp16 = [x for x in net if x["precision"] == "fp16"]
    assert fp16 and fp16[0]["status"].startswith("skipped") and "CPU" in fp16[0]["status"]
    import torch

    if not torch.cuda.is_available():
        cuda = [x for x in rows if x["device"] == "cuda"]
        assert cuda and all("no CUDA GPU" in x["status"] for x in cuda)
        assert "no CUDA GPU" in table
    assert data["machine"]["threads"] == 1
    # Base and Lite side by side: size, cost and speed at 128 px
    gens = {g["model"]: g for g in data["generators"]}
    assert set(gens) == {"hyperlips-base", "hyperlips-lite"}
    assert gens["hyperlips-base"]["gflop_per_frame"] == pytest.approx(5.9, abs=0.3)  # reference §5.8
    assert gens["hyperlips-lite"]["gflop_per_frame"] <= 0.4 and gens["hyperlips-lite"]["params"] < 5e6
    # timed at the batch sizes asked for (--batch-sizes 1), no others
    assert all(g["ms_per_frame_b1"] > 0 and "ms_per_frame_b16" not in g for g in gens.values())
    assert "hyperlips-lite" in table and "GFLOP/frame" in table


def test_the_cpus_said_and_used_are_those_the_process_may_run_on():
    """Under `taskset -c 0` (or a container's cpuset) bench said "2 CPUs" and judged the machine busy against 2, and
    preprocess started 2 workers on one core: the CPUs this process may use are counted, the machine's said beside."""
    import os
    import subprocess
    import sys

    from hyperlips.eval.bench_stages import cpus_words

    assert (cpus_words(2, 2), cpus_words(1, 2)) == ("2 CPUs", "1 of 2 CPUs")
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs CPU affinity and two CPUs")
    code = ("import argparse, os\n"
            "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "from hyperlips.data.commands import add_parser\n"
            "from hyperlips.eval.bench_stages import machine_words\n"
            "p = argparse.ArgumentParser(); add_parser(p.add_subparsers())\n"
            "print(p.parse_args(['preprocess', 'a', 'b']).workers, '|', machine_words())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    workers, words = out.stdout.strip().split(" | ")
    assert workers == "1" and f"1 of {os.cpu_count()} CPUs" in words, out.stdout


def test_a_table_of_skipped_rows_only_and_an_old_result_are_printed():
    """Every row skipped: the table failed (max of one number); a result saved before the machine's CPU count was
    kept beside the usable one was said with this machine's count ("8 of 64 CPUs")."""
    result = {"rows": [{"stage": "end-to-end", "variant": "Starter", "size": 128, "device": "cpu", "precision": "auto",
                        "batch": 8, "status": "skipped: the time budget"}],
              "machine": {"processor": "a CPU", "cpu_count": 8, "torch": "2", "threads": 2, "cuda": None},
              "clip": "c", "seconds": 1}
    text = B.format_table(result)
    assert "skipped: the time budget" in text and "a CPU, 8 CPUs," in text, text


def test_bench_budget_skips_the_rest_with_a_reason():
    res = B.run_bench(sizes=(128,), devices=["cpu"], precisions=("fp32",), batches=(1,), frames=1,
                      end_to_end=("lite:720:128",), memory_seconds=(2, 4), budget=1e-6)
    later = [r for r in res["rows"] if r["stage"] in ("network", "end-to-end", "memory")]
    assert later and all("time budget" in r["status"] for r in later)
    text = B.format_table(res)
    assert "time budget" in text and "decode" in text
    lines = text.splitlines()
    heading = next(x for x in lines if x.startswith("stage "))
    column = heading.index("variant")  # every row's variant under the heading, skipped rows' too (they pushed right)
    for r in res["rows"]:
        line = next(x for x in lines if x.startswith(r["stage"] + " ") and r["variant"] in x)
        assert line.index(r["variant"]) == column, (line, heading)


def test_memory_asked_of_a_gpu_run_is_said_skipped():
    """--devices cuda with the memory runs (CPU only) dropped them without a word."""
    res = B.run_bench(sizes=(128,), devices=["cuda:0"], precisions=("fp32",), batches=(1,), frames=1,
                      end_to_end=(), memory_seconds=(2, 4), generator_table=False)
    memory = [r for r in res["rows"] if r["stage"] == "memory"]
    assert len(memory) == 2 and all("measured on the CPU (add cpu to --devices)" in r["status"] for r in memory)


def test_end_to_end_row_on_a_short_clip(tmp_path):
    video, audio = B.synthetic_clip(tmp_path, seconds=0.4)
    rows = B.bench_end_to_end(video, audio, 128, "cpu", 4, tmp_path)
    assert rows[0].stage == "end-to-end" and rows[0].frames == 10 and rows[0].fps > 0
    assert 0 < rows[0].first_frame < rows[0].seconds  # the start-up: speech, the reference search, the first batch
    stages = {r.stage.split(":")[-1].strip() for r in rows[1:]}
    assert {"decode", "faces", "network", "paste", "encode"} <= stages


def test_the_json_names_an_end_to_end_runs_stages_without_the_tables_indent(tmp_path):
    """The JSON kept the table's layout in the stage names ("  e2e: encode"): the indent is the table's alone."""
    video, audio = B.synthetic_clip(tmp_path, seconds=0.4)
    rows = [asdict(r) for r in B.bench_end_to_end(video, audio, 128, "cpu", 4, tmp_path)]
    stages = [r["stage"] for r in json.loads(json.dumps(B._json_safe(rows)))]
    assert stages[0] == "end-to-end" and {"e2e: decode", "e2e: encode"} <= set(stages[1:]), stages
    assert all(s == s.strip() for s in stages), stages
    table = B.format_table({"rows": rows, "machine": {"processor": "a CPU", "cpu_count": 2, "torch": "2",
                                                      "threads": 1, "cuda": None}, "clip": "c", "seconds": 1})
    assert "\n  e2e: encode " in table and B.format_row(rows[-1]).startswith("  e2e: "), table


def test_rows_without_a_network_say_no_precision(tmp_path):
    """decode, faces, paste and encode said "fp32" in the precision column, and an end-to-end run's decode or encode
    its network's precision: only rows that run a network have one ("-" in the table, null in the JSON)."""
    encode = B.bench_encode([np.zeros((32, 32, 3), np.uint8)] * 2, tmp_path)
    skipped = B.bench_paste([np.zeros((32, 32, 3), np.uint8)], [None], 128)  # (no face: skipped)
    video, audio = B.synthetic_clip(tmp_path, seconds=0.4)
    e2e = B.bench_end_to_end(video, audio, 128, "cpu", 4, tmp_path)
    precision = {r.stage: r.precision for r in [encode, skipped] + e2e}
    assert precision["encode"] is None and precision["paste"] is None, precision
    assert precision["end-to-end"] == precision["e2e: network"] in ("fp32", "bf16"), precision
    assert all(precision[f"e2e: {s}"] is None for s in ("decode", "faces", "paste", "encode")), precision
    assert B.format_row(encode).split(" | ")[4] == "-" and B.format_row(skipped).split(" | ")[4] == "-"
    assert json.loads(json.dumps(B._json_safe(asdict(encode))))["precision"] is None


def test_the_synthetic_clip_shows_its_face_at_every_size_and_a_row_says_frames_without_one(tmp_path, monkeypatch):
    """The synthetic 1080p clip pasted the same 400 px face as at 720p: the detector found it in about a third of the
    frames, so the "1080p end to end" speed skipped the network and paste-back on two thirds of them, without a word.
    The face scales with the frame; a run where some frames had no face says how many had a mouth."""
    from hyperlips.face.detect import FaceDetector
    from hyperlips.media.video import FrameReader
    from hyperlips.sync_report import SyncReport

    video, _ = B.synthetic_clip(tmp_path / "hd", seconds=1.0, size=(1920, 1080))
    with FaceDetector() as det, FrameReader(video) as r:
        found = [bool(det.detect(fr.image)) for fr in r]
    assert sum(found) >= 0.8 * len(found), found  # (the 400 px face: 8 of these 25)

    from hyperlips import pipeline

    real = pipeline.LipSync.sync

    def fewer_faces(self, *a, **k):  # a run where 3 frames had no face
        rep = real(self, *a, **k)
        return SyncReport(**{**rep.__dict__, "frames_with_face": rep.frames - 3})

    monkeypatch.setattr(pipeline.LipSync, "sync", fewer_faces)
    clip, audio = B.synthetic_clip(tmp_path / "sd", seconds=0.4)
    rows = B.bench_end_to_end(clip, audio, 128, "cpu", 4, tmp_path)
    assert rows[0].variant.endswith(", a mouth in 7 of 10 frames"), rows[0].variant


def test_summary_compares_what_the_issue_asks():
    rows = [
        dict(stage="network", variant="reference: original layout (Base, NCHW)", size=128, device="cpu", batch=16,
             fps=8.0, status="ok", precision="fp32"),
        dict(stage="end-to-end", variant="Lite, 720p, random weights", size=128, device="cpu", batch=16, fps=30.0,
             status="ok", precision="bf16"),
        dict(stage="end-to-end", variant="Base, 720p, random weights", size=128, device="cpu", batch=16, fps=24.0,
             status="ok", precision="bf16"),
        dict(stage="end-to-end", variant="Lite + HR, 720p, random weights", size=256, device="cpu", batch=16,
             fps=12.0, status="ok", precision="bf16"),
        dict(stage="memory", variant="sync, Lite (random weights), 8 s synthetic 720p input", size=128, device="cpu",
             batch=16, fps=20.0, frames=200, peak_mb=800.0, status="ok", precision="auto"),
        dict(stage="memory", variant="sync, Lite (random weights), 40 s synthetic 720p input", size=128,
             device="cpu", batch=16, fps=20.0, frames=1000, peak_mb=840.0, status="ok", precision="auto"),
    ]
    text = "\n".join(B.summarise(rows))
    assert "Lite end to end at 720p: 30.0 fps (1.20x real time" in text
    assert "Base (bf16) end to end at 720p: 24.0 fps = 3.0x the reference network alone (8.0 fps" in text
    assert "own inference batch" not in text
    own = dict(rows[0], batch=B.ORIGINAL_BATCH, fps=6.0)
    text = "\n".join(B.summarise([own] + rows))
    assert ("Base (bf16) end to end at 720p: 24.0 fps = 3.0x the reference network alone (8.0 fps: original layout, "
            "fp32, batch 16); 4.0x it in the original's own inference batch of 128 (6.0 fps)") in text
    assert "Lite + HR (bf16) end to end at 720p, mouth at 256 px: 12.0 fps" in text
    assert ("peak memory (Lite (random weights)): 840 MB on the long input against 800 MB on the short one (1.05x "
            "for 5x the length)") in text  # (which network: the rows did not say)
    assert "first frame" not in text  # rows that did not measure it (or JSON's None) say nothing of it
    assert "first frame" not in "\n".join(B.summarise([dict(r, first_frame=None) for r in rows]))
    timed = [dict(r, frames=150, seconds=150 / r["fps"], first_frame=0.5) if r["stage"] == "end-to-end" else r
             for r in [own] + rows]  # 150 frames at 24 fps: 6.25 s, the first after 0.5 s, 149 in the 5.75 s after
    text = "\n".join(B.summarise(timed))
    assert ("Base (bf16) end to end at 720p: 24.0 fps (the first frame after 0.50 s, then 25.9 fps) = 3.0x the "
            "reference network alone") in text
    assert "Lite end to end at 720p: 30.0 fps (1.20x real time for 25 fps video, precision bf16; the first frame " \
           "after 0.50 s, then 33.1 fps)" in text
    assert "Lite + HR (bf16) end to end at 720p, mouth at 256 px: 12.0 fps (the first frame after 0.50 s, then 12.4 fps)" \
        in text


def test_the_summary_compares_on_a_given_clip_in_the_batch_asked_and_says_when_the_machine_was_busy():
    """With --video the rows are named by the clip, and the Base-against-the-reference line was left out; a reference
    timed in --original-batch 64 was measured and never compared; a busy machine (which slows the reference and Base
    by different shares) went unsaid."""
    rows = [
        dict(stage="network", variant="reference: original layout (Base, NCHW)", size=128, device="cpu", batch=1,
             fps=8.0, status="ok", precision="fp32", load=1.9),
        dict(stage="network", variant="reference: original layout (Base, NCHW)", size=128, device="cpu", batch=64,
             fps=6.0, status="ok", precision="fp32", load=2.1),
        dict(stage="end-to-end", variant="Base, video3.mp4, random weights", size=128, device="cpu", batch=16,
             fps=24.0, status="ok", precision="bf16", load=2.0),
        dict(stage="end-to-end", variant="Lite, video3.mp4, random weights", size=128, device="cpu", batch=16,
             fps=30.0, status="ok", precision="bf16", load=2.0),
    ]
    idle = {"threads": 2, "cpu_count": 2, "load_start": 0.1}
    text = "\n".join(B.summarise(rows, 64, idle))
    assert ("Base (bf16) end to end at video3.mp4: 24.0 fps = 3.0x the reference network alone (8.0 fps: original "
            "layout, fp32, batch 1); 4.0x it in the original's own inference batch of 64 (6.0 fps)") in text, text
    assert "Lite end to end at video3.mp4: 30.0 fps" in text and text.count("video3.mp4") == 2, text
    assert "busy" not in text
    busy = "\n".join(B.summarise([dict(r, load=4.5) if r["batch"] == 64 else r for r in rows], 64, idle))
    assert "note: the machine was busy (load average up to 4.5 with 2 threads measuring, 2 CPUs)" in busy, busy
    assert "ratios between rows are unreliable" in busy
    before = "\n".join(B.summarise(rows, 64, dict(idle, load_start=1.4)))
    assert "note: the machine was busy (load average up to 2.1" in before, before
    named = [dict(r, variant=r["variant"].replace("video3.mp4", "talk, take2.mp4")) for r in rows]  # a comma in
    text = "\n".join(B.summarise(named, 64, idle))  # its name: the summary named the clip "talk"
    assert "Lite end to end at talk, take2.mp4: 30.0 fps" in text, text


def test_network_rows_are_timed_in_rounds_their_median_and_range_kept(monkeypatch):
    """A rate that changes from one round to the next (another job on the machine) moves the row's figure less: its
    median is reported, with the rounds' range."""
    from hyperlips.eval import bench_stages as S

    now = [0.0]
    monkeypatch.setattr(S.time, "perf_counter", lambda: now[0])
    pace = iter([0.125] + [0.125] * 4 + [0.5] + [0.25] * 4)  # seconds per call: the warm-up, then three rounds

    def call():  # one batch of 4 frames
        now[0] += next(pace)
        return 4

    frames, secs, _, rates = S._timed(call, "cpu", min_frames=4, min_seconds=1.5, rounds=3)
    assert rates == [32.0, 8.0, 16.0]  # each round ran until its 0.5 s: 4 calls of 0.125 s, one of 0.5, 2 of 0.25
    assert frames == 4 * (4 + 1 + 2) and secs == 1.5
    row = S._row("network", frames, secs, S.PeakMemory(), rates=rates, variant="x")
    assert (row.fps, row.fps_low, row.fps_high) == (16.0, 8.0, 32.0)
    assert "16.00 (8.0-32.0)" in B.format_row(row)
    plain = S._row("decode", frames, secs, S.PeakMemory(), rates=rates[:1])  # one round: frames over seconds
    assert plain.fps == pytest.approx(frames / secs) and B.format_row(plain).count("(") == 0
    # the summary gives the ratio over the reference's rounds
    rows = [dict(stage="network", variant="reference: original layout (Base, NCHW)", size=128, device="cpu", batch=1,
                 fps=15.0, fps_low=12.0, fps_high=16.0, status="ok", precision="fp32"),
            dict(stage="end-to-end", variant="Base, 720p, random weights", size=128, device="cpu", batch=16,
                 fps=45.0, status="ok", precision="bf16")]
    assert ("Base (bf16) end to end at 720p: 45.0 fps = 3.0x (2.8-3.8x over its rounds) the reference network alone "
            "(15.0 fps, its rounds 12.0-16.0: original layout, fp32, batch 1)") in "\n".join(B.summarise(rows))
    as_json = [dict(r, fps_low=None, fps_high=None) for r in rows]  # NaN written to JSON: no range said
    assert "rounds" not in "\n".join(B.summarise(as_json))


def test_the_reference_is_also_timed_in_the_originals_batch_after_the_720p_runs(monkeypatch):
    calls = []

    def network(size, device, precision, batches, flow, frames, over_budget, model, layout):
        calls.append(("network", model, layout, tuple(batches)))
        return []

    monkeypatch.setattr(B, "bench_network", network)
    monkeypatch.setattr(B, "bench_end_to_end", lambda *a, **k: calls.append(("e2e",)) or [])
    for kind in ("decode", "encode"):
        monkeypatch.setattr(B, f"bench_{kind}", lambda *a, **k: [])
    monkeypatch.setattr(B, "bench_faces", lambda images: ([], [None] * len(images)))
    monkeypatch.setattr(B, "bench_paste", lambda *a, **k: [])
    kw = dict(sizes=(128,), devices=["cpu"], precisions=("fp32",), batches=(1, 16), frames=1,
              end_to_end=("base:720:128",), memory_seconds=(), generator_table=False)
    B.run_bench(**kw)
    assert calls == [("network", "hyperlips-base", "original", (1, 16)),
                     ("network", "hyperlips-base", "channels-last", (1, 16)),
                     ("network", "hyperlips-lite", "channels-last", (1, 16)),
                     ("e2e",), ("network", "hyperlips-base", "original", (128,))]
    calls.clear()
    B.run_bench(**kw, original_batch=0)
    assert ("network", "hyperlips-base", "original", (128,)) not in calls and len(calls) == 4


def test_the_shipped_starter_runs_end_to_end_as_sync_runs_it(tmp_path):
    from hyperlips.models import shipped

    if shipped.starter() is None:
        pytest.skip("this build ships no starter")
    video, audio = B.synthetic_clip(tmp_path, seconds=0.4)
    rows = B.bench_end_to_end(video, audio, 128, "cpu", 4, tmp_path, "starter", label="720p")
    assert rows[0].stage == "end-to-end" and rows[0].frames == 10 and rows[0].fps > 0
    assert rows[0].variant == "Starter, 720p, shipped weights, mouth warp"
    assert str(B.E2ESpec.parse("starter:1080")) == "starter:1080:128"
    line = B.summarise([dict(asdict(rows[0]), fps=27.5, first_frame=float("nan"), precision="bf16")])
    assert line == ["the shipped starter end to end at 720p, its mouth as sync makes it by default (mouth warp): 27.5 "
                    "fps (1.10x real time for 25 fps video, precision bf16)"]
    line = B.summarise([dict(asdict(rows[0]), fps=27.5, precision="bf16")])[0]
    assert line.startswith("the shipped starter end to end at 720p, its mouth as sync makes it by default (mouth "
                           "warp): 27.5 fps (1.10x real time for 25 fps video, precision bf16; the first frame "
                           "after "), line
    assert rows[0].video_fps == 25.0  # the run's own rate: a 30 fps clip's real time is 30 frames a second
    line = B.summarise([dict(asdict(rows[0]), fps=27.5, video_fps=30.0, first_frame=float("nan"),
                             precision="fp32")])[0]
    assert line.endswith("27.5 fps (0.92x real time for 30 fps video, precision fp32)"), line


@pytest.mark.parametrize("text", ["lite", "lite:480", "medium:720", "base:720:300", "lite:720:128:1",
                                  "starter:720:256"])
def test_end_to_end_spec_mistakes(text):
    from hyperlips.errors import UserError

    with pytest.raises(UserError, match="--end-to-end takes MODEL:HEIGHT"):
        B.E2ESpec.parse(text)


@pytest.mark.slow
def test_memory_rows_from_fresh_processes(tmp_path):
    rows = B.bench_memory(tmp_path, (1.0, 3.0))
    assert [r.status for r in rows] == ["ok", "ok"] and [r.frames for r in rows] == [25, 75]
    assert rows[0].variant.startswith("sync, Lite (random weights), 1 s synthetic 720p input")  # which network
    assert rows[0].peak_mb > 100 and rows[1].delta_mb == pytest.approx(rows[1].peak_mb - rows[0].peak_mb)


def test_peak_memory_sees_an_allocation():
    with B.PeakMemory("cpu") as mem:
        a = np.ones(200 * 2**20 // 8)
        a += 1
        del a
    assert mem.delta > 150


def test_precision_support_on_this_machine():
    from hyperlips.precision import cpu_has_native_bf16

    assert B.precision_support("cpu", "fp32") is None
    assert B.precision_support("cpu", "fp16").startswith("skipped")
    bf16 = B.precision_support("cpu", "bf16")
    if cpu_has_native_bf16():
        assert bf16 is None
    else:
        assert bf16.startswith("skipped") and "bf16 instructions" in bf16


@pytest.mark.parametrize("args, message", [
    (("--batch-sizes", "0"), "--batch-sizes"),
    (("-o", "bench.txt"), "JSON"),
    (("--devices", "tpu"), "--devices"),
    (("--video", "missing.mp4"), "not found"),
    (("--end-to-end", "lite:480"), "--end-to-end"),
    (("--memory-seconds", "60", "30"), "--memory-seconds"),
    (("--original-batch", "-1"), "--original-batch"),
    (("--budget", "-5"), "--budget must be 0"),
    (("--budget", "nan"), "--budget must be 0"),
    (("--memory-seconds", "1", "inf"), "--memory-seconds takes two lengths"),
    (("--memory-seconds", "1", "1e12"), "at most 1800"),
    (("--seconds", "0.5"), "--seconds must be 1 to 600"),
    (("--seconds", "nan"), "--seconds must be 1 to 600"),
    (("--seconds", "601"), "--seconds must be 1 to 600"),
    (("-o", "/proc/no/bench.json"), "cannot write --output /proc/no/bench.json"),  # before measuring, not after
])
def test_bench_user_mistakes(tmp_path, args, message):
    r = run_cli("bench", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr


def test_run_bench_from_python_checks_its_arguments_and_puts_torchs_threads_back(monkeypatch):
    """From Python, `run_bench(batches=[0])` ran and recorded torch's own errors as rows, `precisions=["fp8"]` was a
    KeyError; `threads=1` left the whole process on one thread for good."""
    import torch

    from hyperlips.errors import UserError

    for kwargs, words in [({"batches": [0]}, "--batch-sizes must be whole numbers of at least 1"),
                          ({"frames": 0}, "--frames must be"), ({"precisions": ["fp8"]}, "--precisions takes"),
                          ({"sizes": [100]}, "--sizes takes 128, 256, 512"), ({"models": ["huge"]}, "--models takes"),
                          ({"threads": "2"}, "--threads must be"), ({"seconds": 0.5}, "--seconds must be 1 to"),
                          ({"devices": ["tpu"]}, "--devices takes")]:
        with pytest.raises(UserError, match=words):
            B.run_bench(**kwargs)
    before = torch.get_num_threads()
    seen = []
    monkeypatch.setattr(B, "_run_bench", lambda **kw: seen.append(torch.get_num_threads()) or {"rows": []})
    B.run_bench(threads=1)
    assert seen == [1] and torch.get_num_threads() == before


def test_the_outputs_write_check_leaves_no_folder_behind(tmp_path, monkeypatch):
    """`bench -o a/b/x.json`, refused or failed later, left the folders the up-front write check made; a quoted `~`
    made a folder named "~" where the command ran."""
    from hyperlips.errors import UserError

    monkeypatch.chdir(tmp_path)
    B._check_writable(Path("a/b/x.json"))
    with pytest.raises(UserError, match="begins with a '~' that was not made your home folder"):
        B._check_writable(Path("~/x.json"))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a").mkdir()
    B._check_writable(Path("a/b/x.json"))  # a folder that was there stays
    assert [p.name for p in tmp_path.rglob("*")] == ["a"]


def test_a_given_clip_that_cannot_be_run_is_refused_before_measuring(tmp_path):
    """``--video`` a sound file, a silent video without ``--audio``, or ``--audio`` alone (the synthetic clips bring
    their own speech): one line, before the minutes of generator rows (a wav failed after them)."""
    from helpers import write_wav
    from media_builders import write_video

    wav = write_wav(tmp_path / "speech.wav", 0.5)
    silent = write_video(tmp_path / "silent.mp4", [np.zeros((32, 32, 3), np.uint8)] * 3)
    for args, message in ((("--video", wav), "has no video stream"), (("--video", silent), "has no sound"),
                          (("--audio", wav), "--audio goes with --video")):
        r = run_cli("bench", *args, "--end-to-end", "lite:720", "-o", tmp_path / "b.json", timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr[-800:]
        assert "generators" not in r.stdout + r.stderr
    # without end-to-end runs no speech is needed: a silent clip's stages are timed (it was refused)
    from hyperlips.errors import UserError

    B._check_clip(silent, None, speech=False)
    with pytest.raises(UserError, match="has no sound: give --audio with speech for it \\(or --end-to-end none"):
        B._check_clip(silent, None)


@pytest.mark.parametrize("e2e, memory, want_e2e, want_memory", [
    (["none"], ["none"], [], ()),
    ([], [], [], ()),  # the flags alone
    (["lite:720"], ["30", "600"], ["lite:720:128"], (30.0, 600.0)),
])
def test_the_command_skips_what_is_given_as_none(monkeypatch, tmp_path, e2e, memory, want_e2e, want_memory):
    import argparse

    got = {}
    monkeypatch.setattr(B, "run_bench", lambda **kw: got.update(kw) or {"rows": []})
    monkeypatch.setattr(B, "format_table", lambda result: "")
    p = argparse.ArgumentParser()
    B.add_bench_options(p)
    args = p.parse_args(["--end-to-end", *e2e, "--memory-seconds", *memory, "-o", str(tmp_path / "b.json")])
    assert B.run_bench_command(args) == 0
    assert [f"{s.model}:{s.height}:{s.size}" for s in got["end_to_end"]] == want_e2e
    assert got["memory_seconds"] == want_memory


def test_the_command_refuses_memory_lengths_it_cannot_read(tmp_path):
    import argparse

    from hyperlips.errors import UserError

    p = argparse.ArgumentParser()
    B.add_bench_options(p)
    for bad in (["30"], ["thirty", "600"], ["600", "30"]):
        with pytest.raises(UserError, match="--memory-seconds takes two lengths"):
            B.run_bench_command(p.parse_args(["--memory-seconds", *bad, "-o", str(tmp_path / "b.json")]))


def _a_720p_video_timed_by_nothing(monkeypatch, tmp_path, calls: list):
    """A ``--video`` of 1280x720 for run_bench, every stage stubbed out: the end-to-end runs are noted in ``calls`` as
    (video name, mouth size)."""
    monkeypatch.setattr(B, "bench_network", lambda *a, **k: [])
    monkeypatch.setattr(B, "bench_end_to_end", lambda v, a, size, *r, **k: calls.append((v.name, size)) or [])
    for kind in ("decode", "encode", "paste"):
        monkeypatch.setattr(B, f"bench_{kind}", lambda *a, **k: [])
    monkeypatch.setattr(B, "bench_faces", lambda images: ([], [(0, 0, 4, 4)] * len(images)))
    monkeypatch.setattr(B, "_cut_audio", lambda src, dst, seconds: dst)
    monkeypatch.setattr(B, "_fps", lambda v: 25.0)
    monkeypatch.setattr(B, "_load_frames", lambda v, n: [np.zeros((8, 8, 3), np.uint8)])
    monkeypatch.setattr(B, "_frame_size", lambda v: (1280, 720))
    video = tmp_path / "me.mp4"
    video.write_bytes(b"read by nothing here")
    return video


def test_a_given_video_runs_each_model_once_and_says_the_heights_do_not_apply(monkeypatch, tmp_path):
    """``--video`` with ``--end-to-end lite:1080 lite:720``: both rows ran on the same clip, labelled alike."""
    calls, said = [], []
    video = _a_720p_video_timed_by_nothing(monkeypatch, tmp_path, calls)
    B.run_bench(sizes=(128,), devices=["cpu"], precisions=("fp32",), batches=(1,), frames=1, video=video,
                audio=video, end_to_end=("lite:1080:128", "lite:720:128", "lite:720:256"), memory_seconds=(),
                generator_table=False, original_batch=0, log=said.append)
    assert calls == [("me.mp4", 128), ("me.mp4", 256)]
    assert ("warning: --video me.mp4 is 1280x720: the end-to-end runs use it at its own size, not at 1080p (the "
            "heights in --end-to-end choose the synthetic clips)") in said, said


def test_a_given_video_with_one_run_of_another_height_is_warned(monkeypatch, tmp_path):
    """``--video`` a 720p clip with ``--end-to-end lite:1080:128`` alone ran it at 720p without a word (only two
    heights were said); the clip line says the size it ran at."""
    calls, said = [], []
    video = _a_720p_video_timed_by_nothing(monkeypatch, tmp_path, calls)

    def run(*specs):
        said.clear()
        return B.run_bench(sizes=(128,), devices=["cpu"], precisions=("fp32",), batches=(1,), frames=1, video=video,
                           audio=video, end_to_end=specs, memory_seconds=(), generator_table=False, original_batch=0,
                           log=said.append)

    res = run("lite:1080:128")
    assert calls == [("me.mp4", 128)]
    assert [m for m in said if m.startswith("warning: ")] == [
        "warning: --video me.mp4 is 1280x720: the end-to-end runs use it at its own size, not at 1080p (the heights "
        "in --end-to-end choose the synthetic clips)"], said
    assert res["clip"] == f"{video} (1280x720, its own size)"
    run("lite:720:128", "base:720:128")  # its own height: nothing to say
    assert not [m for m in said if m.startswith("warning: ")], said


def test_seconds_sets_the_end_to_end_runs_length(monkeypatch, tmp_path):
    """``--seconds 2``: the synthetic clip and the speech the end-to-end runs take are 2 s long (50 frames)."""
    import argparse

    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import probe

    seen = {}

    def end_to_end(video, audio, *rest, **kw):  # what the run would read, looked at while it exists
        seen.update(frames=probe(video).n_frames, speech=len(load_audio(audio, 16000)) / 16000)
        return []

    monkeypatch.setattr(B, "bench_end_to_end", end_to_end)
    monkeypatch.setattr(B, "bench_network", lambda *a, **k: [])
    for kind in ("decode", "encode", "paste"):
        monkeypatch.setattr(B, f"bench_{kind}", lambda *a, **k: [])
    monkeypatch.setattr(B, "bench_faces", lambda images: ([], [(0, 0, 4, 4)] * len(images)))
    monkeypatch.setattr(B, "generator_costs", lambda *a, **k: [])
    monkeypatch.setattr(B, "format_table", lambda result: "")
    p = argparse.ArgumentParser()
    B.add_bench_options(p)
    out = tmp_path / "b.json"
    args = p.parse_args(["--seconds", "2", "--end-to-end", "lite:720", "--memory-seconds", "--sizes", "128",
                         "--precisions", "fp32", "--devices", "cpu", "--original-batch", "0", "-o", str(out)])
    assert B.run_bench_command(args) == 0
    assert seen == {"frames": 50, "speech": 2.0}
    assert json.loads(out.read_text())["clip"] == ("synthetic 25 fps clip (astronaut photo drifting): 1280x720 (the "
                                                   "stages on its first 25 frames, 2 s end to end)")


def test_the_end_to_end_runs_are_made_in_the_precisions_given(monkeypatch, tmp_path):
    """``--precisions fp32`` timed the networks in fp32 and ran the end-to-end rows in auto's bf16 (on a CPU with
    bf16): given, the precisions are the end-to-end runs' too, each run made in each; not given, sync's auto."""
    import argparse

    from hyperlips.precision import cpu_has_native_bf16

    video, audio = B.synthetic_clip(tmp_path, seconds=0.4)
    row = B.bench_end_to_end(video, audio, 128, "cpu", 4, tmp_path, precision="fp32")[0]
    assert row.precision == "fp32" and row.status == "ok"  # (auto: bf16 on a CPU that has it)

    made, networks = [], []
    monkeypatch.setattr(B, "bench_end_to_end", lambda v, a, size, dev, batch, folder, model, label, precision: made.append(
        precision) or [B.BenchRow("end-to-end", f"Lite, {label}, random weights", size, dev, precision, batch, 10, 1.0,
                                  10.0)])
    monkeypatch.setattr(B, "bench_network", lambda size, dev, prec, *a: networks.append(prec) or [])
    for kind in ("decode", "encode", "paste"):
        monkeypatch.setattr(B, f"bench_{kind}", lambda *a, **k: [])
    monkeypatch.setattr(B, "bench_faces", lambda images: ([], [(0, 0, 4, 4)] * len(images)))
    monkeypatch.setattr(B, "synthetic_clip", lambda folder, seconds, size: (video, audio))
    monkeypatch.setattr(B, "generator_costs", lambda *a, **k: [])
    monkeypatch.setattr(B, "format_table", lambda result: "")
    p = argparse.ArgumentParser()
    B.add_bench_options(p)

    def run(*precisions):
        made.clear(), networks.clear()
        out = tmp_path / "b.json"
        given = ["--precisions", *precisions] if precisions else []
        B.run_bench_command(p.parse_args([*given, "--end-to-end", "lite:720", "--memory-seconds", "--sizes", "128",
                                          "--models", "lite", "--devices", "cpu", "--original-batch", "0",
                                          "-o", str(out)]))
        return json.loads(out.read_text())

    res = run("fp32")
    assert made == ["fp32"] and set(networks) == {"fp32"}
    assert [r["precision"] for r in res["rows"] if r["stage"] == "end-to-end"] == ["fp32"]
    assert "Lite end to end at 720p: 10.0 fps (0.40x real time for 25 fps video, precision fp32)" in res["summary"]
    run()  # not given: every precision for the networks, sync's own choice end to end
    assert made == ["auto"] and set(networks) == {"fp32", "fp16", "bf16"}
    res = run("fp32", "fp16", "bf16")  # each run in each one, those the CPU lacks skipped with the reason
    assert made == ["fp32", "bf16"] if cpu_has_native_bf16() else made == ["fp32"]
    e2e = {r["precision"]: r for r in res["rows"] if r["stage"] == "end-to-end"}
    assert list(e2e) == ["fp32", "fp16", "bf16"] and e2e["fp16"]["status"].startswith("skipped: fp16 is not")
    said = [line for line in res["summary"] if line.startswith("Lite end to end at 720p")]
    assert [line.split("precision ")[1] for line in said] == [p + ")" for p in made], said  # each said


def test_the_clip_is_said_as_this_run_used_it(monkeypatch):
    """The text named "synthetic 6 s 25 fps clips at 1280x720 and 1920x1080" whatever ran: with --end-to-end limited
    to 720p, or none, it named runs that were not made."""
    monkeypatch.setattr(B, "bench_end_to_end", lambda *a, **k: [])
    monkeypatch.setattr(B, "bench_network", lambda *a, **k: [])
    for kind in ("decode", "encode", "paste"):
        monkeypatch.setattr(B, f"bench_{kind}", lambda *a, **k: [])
    monkeypatch.setattr(B, "bench_faces", lambda images: ([], [(0, 0, 4, 4)] * len(images)))
    monkeypatch.setattr(B, "synthetic_clip", lambda folder, seconds, size: (folder / "v.mp4", folder / "a.wav"))
    monkeypatch.setattr(B, "_cut_audio", lambda src, dst, seconds: dst)
    monkeypatch.setattr(B, "_fps", lambda v: 25.0)
    monkeypatch.setattr(B, "_load_frames", lambda v, n: [np.zeros((8, 8, 3), np.uint8)] * n)

    def clip(end_to_end, budget=0):
        return B.run_bench(sizes=(128,), devices=["cpu"], precisions=("fp32",), batches=(1,), frames=1,
                           end_to_end=end_to_end, memory_seconds=(), generator_table=False, original_batch=0,
                           budget=budget)["clip"]

    head = "synthetic 25 fps clip (astronaut photo drifting): 1280x720 (the stages on its first 25 frames"
    assert clip(["lite:720:128"]) == head + ", 6 s end to end)"
    assert clip([]) == clip(["lite:1080:128"], budget=1e-9) == head + ")"  # (the 1080p run skipped: not made)
    assert clip(["lite:1080:128", "lite:720:256"]) == ("synthetic 25 fps clips (astronaut photo drifting): 1280x720 "
                                                       "(the stages on its first 25 frames, 6 s end to end), "
                                                       "1920x1080 (6 s end to end)")


def test_a_given_video_without_a_face_is_refused_before_the_network_rows(monkeypatch, tmp_path):
    from hyperlips.errors import UserError

    timed = []
    monkeypatch.setattr(B, "bench_network", lambda *a, **k: timed.append("network") or [])
    monkeypatch.setattr(B, "bench_end_to_end", lambda *a, **k: timed.append("e2e") or [])
    for kind in ("decode", "encode", "paste"):
        monkeypatch.setattr(B, f"bench_{kind}", lambda *a, **k: [])
    monkeypatch.setattr(B, "bench_faces", lambda images: ([], [None] * len(images)))  # as on a wall
    monkeypatch.setattr(B, "_cut_audio", lambda src, dst, seconds: dst)
    monkeypatch.setattr(B, "_fps", lambda v: 25.0)
    monkeypatch.setattr(B, "_load_frames", lambda v, n: [np.zeros((8, 8, 3), np.uint8)] * 3)
    monkeypatch.setattr(B, "first_face_frame", lambda v: None)  # nor later
    monkeypatch.setattr(B, "_frame_size", lambda v: (1280, 720))
    video = tmp_path / "wall.mp4"
    video.write_bytes(b"read by nothing here")
    with pytest.raises(UserError, match="no face found in the first 60 s of .*wall.mp4: the end-to-end runs"):
        B.run_bench(sizes=(128,), devices=["cpu"], precisions=("fp32",), batches=(1,), frames=1, video=video,
                    audio=video, end_to_end=("lite:720:128",), memory_seconds=(), generator_table=False)
    assert timed == []


@pytest.mark.parametrize("suffix, codecs", [(".mp4", ("libx264", "aac")), (".webm", ("libvpx-vp9", "libopus"))])
def test_a_given_video_whose_face_shows_later_is_timed_from_there(monkeypatch, real_data, tmp_path, suffix, codecs):
    """A clip that opens on 2 s without a face (a title card) was refused: only its first frames were looked at. It is
    timed from its first face, on a copy from there (an H.264 MP4 whatever the clip's own container: a WebM's copy
    was written under its name, which takes no H.264, and the run ended in a traceback)."""
    from helpers import read_frames
    from media_builders import speech, write_video

    face = read_frames(real_data / "retalking" / "face3.mp4", limit=30)
    sound, rate = speech(real_data, 3.2), 16000
    if codecs[1] == "libopus":  # (Opus takes 48 kHz)
        sound, rate = np.repeat(sound, 3), 48000
    video = write_video(tmp_path / f"titled{suffix}", [np.zeros_like(face[0])] * 50 + face, codec=codecs[0],
                        audio=sound, audio_rate=rate, audio_codec=codecs[1])
    ran, said = [], []
    monkeypatch.setattr(B, "bench_network", lambda *a, **k: [])

    labels = []

    def end_to_end(v, a, *rest, **k):  # what the run would read, looked at while it exists
        labels.append(k.get("label"))
        from hyperlips.face.detect import FaceDetector
        from hyperlips.media.audio import load_audio

        with FaceDetector() as det:
            ran.append((bool(det.detect(read_frames(v, limit=1)[0])), len(load_audio(a, 16000)) / 16000))
        if len(ran) == 2:  # a run that fails: its row says why, the rows measured are kept
            from hyperlips.errors import UserError
            raise UserError("no face found in the speech's second half")
        return []

    monkeypatch.setattr(B, "bench_end_to_end", end_to_end)
    for kind in ("decode", "encode", "paste"):
        monkeypatch.setattr(B, f"bench_{kind}", lambda *a, **k: [])
    res = B.run_bench(sizes=(128,), devices=["cpu"], precisions=("fp32",), batches=(1,), frames=4, video=video,
                      end_to_end=("lite:720:128", "base:720:128"), memory_seconds=(), generator_table=False,
                      original_batch=0, log=said.append, seconds=1.0)
    assert ran == [(True, 1.0)] * 2  # from the first face, with the sound of that moment (it ran the title card)
    assert any(f"no face in the first 25 frames of titled{suffix}; the stages and the end-to-end runs are timed from "
               "frame 50" in m for m in said)
    assert labels == [f"titled{suffix}"] * 2  # the user's file named in the rows, not the copy timed
    failed = [r for r in res["rows"] if r["stage"] == "end-to-end"]
    assert len(failed) == 1 and failed[0]["status"] == "failed: no face found in the speech's second half"
    faces = next(r for r in res["rows"] if r["stage"] == "faces")
    assert "a face in 25 of 25 frames" in faces["variant"]


def test_the_stage_rows_name_the_clip_they_timed(real_data):
    """The decode row said "720p H.264" whatever the clip; the faces row divided by every frame without saying that
    a face was found (and FaceMesh run) in only some of them; it said "a face in 21 of 25 frames" beside a frames
    column of 150 (every pass counted) without saying what each counts."""
    from hyperlips.eval import bench_stages as S

    mpg = real_data.parent / "more" / "grid_lipnet" / "bbaf2n.mpg"
    if not mpg.is_file():
        pytest.skip(f"{mpg} is not in the shared data")
    decode = S.bench_decode(mpg, 5)
    assert decode.variant == "PyAV, 288p MPEG-1"
    assert decode.fps_low <= decode.fps <= decode.fps_high and decode.seconds >= 1.0  # rounds, as the networks'

    frames = S._load_frames(mpg, 4)
    row, boxes = S.bench_faces(frames + [np.zeros_like(frames[0])])
    assert sum(b is not None for b in boxes) == 4
    # the frames column counts each pass over the 5 frames: the row says so ("21 of 25 frames" beside 150 read wrong)
    assert row.frames % 5 == 0 and row.frames > 5, row
    assert row.variant.endswith(f"(a face in 4 of 5 frames, each timed {row.frames // 5} times)"), row.variant


def test_the_generator_table_times_the_models_asked_for(monkeypatch):
    """``--models lite`` still timed Base's plain network in the generator table (about ten seconds of it)."""
    from hyperlips.eval import bench_stages as S

    rows = S.generator_costs("cpu", batches=(1,), frames=1, names=["hyperlips-lite"])
    assert [r["model"] for r in rows] == ["hyperlips-lite"] and rows[0]["gflop_per_frame"] < 0.4
    assert [r["model"] for r in S.generator_costs("cpu", batches=(1,), frames=1, names=["hyperlips-base",
                                                                                        "hyperlips-lite"])] == [
        "hyperlips-base", "hyperlips-lite"]


def test_the_benchmark_scripts_make_their_inputs_and_say_the_machine(real_data, tmp_path):
    """benchmarks/sync_memory.py (the script the docs give for memory on a real clip) and serve_soak.py --clip
    stopped at start on an import that had moved; neither said the CPU it measured on."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("sync_memory", root / "sync_memory.py")
    sync_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync_memory)
    video, audio = sync_memory.make_input(real_data / "retalking/face2.mp4", real_data / "hyperlips/audio1.wav", 1.0,
                                          tmp_path)
    assert video.stat().st_size > 0 and audio.stat().st_size > 0
    spec = importlib.util.spec_from_file_location("serve_soak", root / "serve_soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    (tmp_path / "soak").mkdir()
    made = soak.make_inputs(tmp_path / "soak", real_data / "retalking/face2.mp4", 1.0)
    assert made["video"].stat().st_size > 0
    res = subprocess.run([sys.executable, str(root / "sync_memory.py"), "--clip", str(tmp_path / "nope.mp4"),
                          "--audio", str(audio)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "clip not found" in res.stderr and "Traceback" not in res.stderr, res.stderr
