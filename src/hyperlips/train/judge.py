"""``hyperlips train judge``: the sync judge (``models/sync_judge.py``) from a preprocessed dataset.

Two parts are fitted on the training clips: the audio encoder, which learns the mouth shape from the speech as
HyperLips-Lite's does (``train/lite_audio.py``: chunks of consecutive frames, augmented, an ensemble with an
average of its weights), and the basis, the main directions of mouth movement (principal components of the
shapes, each clip's mean removed, scaled to unit variance). The audio encoder is then tuned for a few steps on the
ranking the judge is for (``train/judge_tune.py``). Then it is measured on the validation clips: AUC of
in-sync windows against windows whose face is shifted by ``min_shift`` to 15 frames (the expert's measure), for
windows of 5, 16 and the judge's own length, and each clip's offset found over the whole clip (0 when in sync).

The output folder gets ``judge.safetensors`` and ``report.json`` (every figure above, and the AUC before the
tuning). The fit takes about 45 seconds per 1,000 steps of a 3-net ensemble on one CPU core, the tuning about 30
seconds; a run is short, so it is not resumed but redone.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.datasets import Clip, Manifest
from ..errors import UserError, refuse_unexpanded_home
from ..options import at_least
from .judge_tune import TUNE_STEPS

MEL_SMOOTH = 12  # DCT coefficients kept across the mel bins: held-out AUC 0.844 against 0.834 (four fits each)


def shape_tracks(clips: Sequence[Clip], mel_smooth: int = 0) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray,
                                                                           np.ndarray]]:
    """Per clip, every frame of its range in order: (id, mel (80, T) normalised per utterance (smoothed across
    frequency first with ``mel_smooth`` > 0, as the judge reads it), times (n,) s, shapes (n, 106) (NaN where the
    frame has no face or landmarks), ok (n,)). Shapes are against the range's own mean."""
    from ..data.frames import shape_reference
    from ..face.mouth_shape import SCALE, aligned_moving_points
    from ..media.audio import normalise_utterance

    out = []
    for c in clips:
        lo, hi = c.frame_range
        try:
            tpl, mean = shape_reference(c, (lo, hi))
        except UserError:
            continue  # fewer than 2 frames with landmarks: nothing to learn or judge
        lm = np.asarray(c.landmarks[lo:hi], dtype=np.float64)
        pts = aligned_moving_points(lm, tpl)
        shapes = ((pts - mean) * SCALE).reshape(hi - lo, -1)
        ok = np.isfinite(shapes).all(axis=1) & np.asarray(c.valid[lo:hi], dtype=bool)
        shapes[~ok] = np.nan
        mel = normalise_utterance(np.asarray(c.mel, dtype=np.float32), mel_smooth)
        out.append((c.id, mel, np.asarray(c.times[lo:hi], dtype=np.float64), shapes.astype(np.float32), ok))
    return out


def fit_basis(tracks, components: int) -> np.ndarray:
    """(components, n_shape): principal directions of the shapes (each clip's mean removed), / their std."""
    rows = [s[ok] - s[ok].mean(axis=0) for _, _, _, s, ok in tracks if ok.sum() > 1]
    x = np.concatenate(rows).astype(np.float64)
    if len(x) <= components:
        raise UserError(f"{len(x)} frames with mouth shapes are too few to fit the sync judge's {components} "
                        "directions (--components): more clips, or fewer directions")
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    std = sv[:components] / np.sqrt(len(x))
    return (vt[:components] / np.maximum(std, 1e-9)[:, None]).astype(np.float32)


def audio_projection(judge, mel: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The judge's projected audio shapes at each frame time (mel as ``judge.prepare_mel`` gives it): (n, components)."""
    from ..eval.sync_judge import audio_trajectories

    return audio_trajectories(judge, mel, times, np.zeros(1), 1.0)[0][:, 0].astype(np.float32)


def window_auc(judge, tracks, window: int, per_clip: int = 200, min_shift: int = 5, max_shift: int = 15,
               seed: int = 0) -> tuple[float, dict[str, float]]:
    """AUC of in-sync windows against windows with the face shifted by min_shift..max_shift frames (either way),
    over up to ``per_clip`` window starts per clip whose frames all have shapes; (pooled AUC, per-clip AUC)."""
    import torch

    from ..eval.sync_judge import shape_trajectory
    from .sync import ranking_auc

    rng = np.random.default_rng(seed)
    scores, labels, per = [], [], {}
    for cid, mel, times, shapes, ok in tracks:
        n = len(times)
        if n < window + min_shift:
            continue
        za = audio_projection(judge, mel, times)
        zf = np.nan_to_num(shape_trajectory(judge, shapes)).astype(np.float32)
        full = np.convolve(ok.astype(np.int64), np.ones(window, np.int64), "valid") == window  # start t usable
        pairs = []
        for t in rng.permutation(np.flatnonzero(full))[:per_clip]:
            pairs.append((t, t, 1))
            cands = [u for u in range(t - max_shift, t + max_shift + 1) if abs(u - t) >= min_shift
                     and 0 <= u < len(full) and full[u]]
            if cands:
                pairs.append((t, int(rng.choice(cands)), 0))
        if not pairs:
            continue
        a = np.stack([za[t:t + window] for t, _, _ in pairs])
        v = np.stack([zf[u:u + window] for _, u, _ in pairs])
        with torch.inference_mode():
            s = judge.window_score(torch.from_numpy(a), torch.from_numpy(v)).numpy()
        lab = np.array([y for _, _, y in pairs], np.float64)
        scores.append(s)
        labels.append(lab)
        per[cid] = round(ranking_auc(s, lab), 3)
    if not scores:
        raise UserError(f"no validation clip has {window + min_shift} consecutive frames with mouth shapes")
    return ranking_auc(np.concatenate(scores), np.concatenate(labels)), per


def clip_offsets(judge, tracks) -> dict[str, int | None]:
    """Each clip's offset found by the judge over the whole clip with its own audio (0: in sync; recordings are
    sometimes a few frames off themselves); None where the clip has no window of frames with shapes."""
    from ..eval.sync_judge import judge_offsets_from_shapes

    out: dict[str, int | None] = {}
    for cid, mel, times, shapes, _ in tracks:
        try:
            out[cid] = judge_offsets_from_shapes(judge, shapes, mel, times)
        except ValueError:
            out[cid] = None
    return out


def fit_judge(data: str | Path, out: str | Path, *, steps: int = 3000, members: int = 3, window: int = 25,
              components: int = 16, mel_smooth: int = MEL_SMOOTH, tune_steps: int = TUNE_STEPS, seed: int = 0,
              progress: bool = True) -> dict:
    """Fit a judge on ``data``'s training clips (the regression, the basis, then ``tune_steps`` of tuning on the
    ranking itself, ``train/judge_tune.py``), measure it on its validation clips, write it to ``out``."""
    import torch

    from ..bars import bar as new_bar
    from ..models.checkpoint import save_checkpoint
    from ..models.registry import create_model
    from .judge_tune import tune_judge
    from .lite_audio import fit_audio_encoder

    t0 = time.perf_counter()
    manifest = Manifest.load(data)
    train = shape_tracks(manifest.open_clips("train"), mel_smooth)
    val = shape_tracks(manifest.open_clips("val"), mel_smooth)
    if not train:
        raise UserError(f"{data}: no training clip has frames with face landmarks")
    if not val:
        raise UserError(f"{data}: no validation clip has frames with face landmarks (the judge is measured on them; "
                        "set a split with hyperlips preprocess)")
    fit_basis(train, components)  # (too few frames for it: said now, not after minutes of fitting)
    torch.manual_seed(seed)
    judge = create_model("sync-judge", {"window": window, "components": components, "audio_members": members,
                                        "mel_smooth": mel_smooth})
    plain = [(m, t, np.nan_to_num(s), ok) for _, m, t, s, ok in train]  # what the fit and the tuning read
    bar = new_bar(total=steps, desc="fit the judge's audio encoder", unit="step", disable=not progress)
    fit_audio_encoder(judge.audio_encoder, plain,
                      steps=steps, seed=seed, on_step=lambda i, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}", refresh=False)))
    bar.close()
    judge.basis.copy_(torch.from_numpy(fit_basis(train, components)))
    judge.eval()
    report: dict = {"steps": steps, "members": members, "window": window, "components": components,
                    "mel_smooth": mel_smooth, "tune_steps": 0, "seed": seed,
                    "train_clips": len(train), "val_clips": len(val), "auc": {}, "per_clip_auc": {}}
    if tune_steps:
        try:  # the regression alone, at the judge's window: what the tuning changed
            report["auc_before_tuning"] = round(window_auc(judge, val, window, seed=seed)[0], 3)
        except UserError:
            report["auc_before_tuning"] = None
        bar = new_bar(total=tune_steps, desc="tune it on in-sync against off-sync windows", unit="step",
                   disable=not progress)
        report["tune_steps"] = tune_judge(judge, plain, steps=tune_steps, seed=seed,
                                          on_step=lambda i, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}", refresh=False)))
        bar.close()
        if not report["tune_steps"]:
            report.pop("auc_before_tuning")
    for w in sorted({5, 16, window}):
        try:
            auc, per = window_auc(judge, val, w, seed=seed)
        except UserError:  # validation clips shorter than the window: the judge is still written
            auc, per = None, {}
        report["auc"][str(w)] = None if auc is None else round(auc, 3)
        report["per_clip_auc"][str(w)] = per
    report["offsets"] = clip_offsets(judge, val)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(judge, out / "judge.safetensors", "sync-judge", step=steps + report["tune_steps"])
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def add_parser(stages) -> None:
    p = stages.add_parser("judge", help="fit the lip-sync judge (mouth shapes from speech against FaceMesh's) that "
                          "`eval` scores sync with", description="Fit the lip-sync judge that `eval` scores sync with: "
                          "an audio encoder that reads the mouth shape from speech, compared over one-second windows "
                          "with the shape FaceMesh reads from the face. A few minutes on one CPU core.")
    p.add_argument("data", help="preprocessed dataset folder (from hyperlips preprocess; its val split measures it)")
    p.add_argument("-o", "--out", required=True, help="output folder: judge.safetensors and report.json")
    p.add_argument("--steps", type=int, default=3000, help="audio encoder fitting steps (3000)")
    p.add_argument("--members", type=int, default=3, help="nets in the audio encoder's ensemble (3; the shipped "
                   "judge has 12: steadier, four times the fitting time)")
    p.add_argument("--window", type=int, default=25, help="frames per judged window (25: one second at 25 fps)")
    p.add_argument("--components", type=int, default=16, help="directions of mouth movement compared (16)")
    p.add_argument("--mel-smooth", type=int, default=MEL_SMOOTH, help="smooth each mel frame across frequency to its "
                   f"first N DCT coefficients before normalising, so the voice's pitch does not count (0: off; {MEL_SMOOTH})")
    p.add_argument("--tune-steps", type=int, default=TUNE_STEPS, help="then tune the audio encoder on the ranking of "
                   f"in-sync above off-sync windows for N steps (0: off; {TUNE_STEPS}; longer learns the training "
                   "speakers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=at_least(0), default=0, help="CPU threads for torch (0: torch's default)")
    p.set_defaults(func=run_judge)


def run_judge(args: argparse.Namespace) -> int:
    import torch

    from ..face.mouth_shape import N_SHAPE

    if (args.steps < 1 or args.members < 1 or args.window < 2 or args.components < 1 or args.mel_smooth < 0
            or args.tune_steps < 0):
        raise UserError("--steps and --members must be >= 1, --window >= 2, --components >= 1, --mel-smooth and "
                        "--tune-steps >= 0")
    if args.components > N_SHAPE:  # (a traceback after the whole fit)
        raise UserError(f"--components must be at most {N_SHAPE}: the mouth shape has {N_SHAPE} numbers, so no more "
                        f"directions of its movement exist (got {args.components})")
    refuse_unexpanded_home(args.out, "-o")
    kept = Path(args.out) / "judge.safetensors"
    if kept.exists():  # as the other stages refuse a folder with a run in it (the judge there was replaced unsaid)
        raise UserError(f"{args.out} already holds a judge ({kept.name}, with its report.json): choose another -o "
                        "folder, or remove them to fit it again")
    if args.threads:
        torch.set_num_threads(args.threads)
    rep = fit_judge(args.data, args.out, steps=args.steps, members=args.members, window=args.window,
                    components=args.components, mel_smooth=args.mel_smooth, tune_steps=args.tune_steps,
                    seed=args.seed)
    aucs = ", ".join(f"{w} frames {'n/a (validation clips too short)' if a is None else a}" for w, a in rep["auc"].items())
    print(f"held-out AUC (in sync against 5+ frames off): {aucs}")
    if rep.get("auc_before_tuning") is not None:
        print(f"  at {args.window} frames before the {rep['tune_steps']} tuning steps: {rep['auc_before_tuning']}")
    elif args.tune_steps and not rep["tune_steps"]:
        print(f"  not tuned: no training clip has the {args.window + 30} frames it needs (a window and 15 either side)")
    found = ", ".join(f"{Path(c).name} {'n/a' if o is None else format(o, '+d')}" for c, o in rep["offsets"].items())
    print(f"offset found on each validation clip with its own audio (+ = audio late): {found}")
    print(f"fitted and measured in {rep['seconds']:.0f} s")
    print(f"model: {Path(args.out) / 'judge.safetensors'}")
    judge = shlex.quote(str(Path(args.out) / "judge.safetensors"))
    print(f"use it with: hyperlips eval RESULT --reference VIDEO --expert {judge}")
    return 0
