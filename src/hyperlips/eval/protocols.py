"""Evaluation protocols over folders: pairs of results and references by file name, and the self-reconstruction /
cross-audio protocols that generate the clips first (each then measured by :func:`.pair.evaluate_pair`), from the
clip's own frames or from a copy shifted in time (:func:`shifted_copy`)."""

from __future__ import annotations

import contextlib

from pathlib import Path
from typing import Optional

from ..data.sources import mark_report
from ..errors import UserError, near_name_hint, warn
from ..face.steady import DEFAULT_WEIGHT as DEFAULT_BLEND
from ..media.video import IMAGE_SUFFIXES
from .pair import PROTOCOLS, ClipResult, evaluate_pair

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".m4v", ".webm", ".mpg", ".mpeg")
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".flac", ".ogg", ".aac", ".opus")

__all__ = ["PROTOCOLS", "ClipResult", "evaluate_pair", "pair_folders", "run_protocol", "shifted_copy",
           "against_shifted_source"]


def _media_in(folder: Path, suffixes, twins: Optional[dict[str, list[str]]] = None) -> dict[str, Path]:
    """The media files of ``folder`` by name without suffix (results and references pair up by it, and a result is
    written under it): two of one name (``a.mp4``, ``a.mpg``) are refused rather than one silently dropped, or, with
    ``twins`` given, noted there (name -> its files' names; the first one kept) for the caller to judge."""
    import unicodedata

    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):  # (hidden: a Mac's "._a.mp4"
            stem = unicodedata.normalize("NFC", p.stem)  # stubs on a shared disk) (one name in either Unicode form:
            if stem in out:  # a Mac writes the decomposed one, Linux and Windows keep what was typed)
                if twins is not None:
                    twins.setdefault(stem, [out[stem].name]).append(p.name)
                    continue
                raise UserError(f"{folder} holds two files named {stem} ({out[stem].name}, {p.name}): their "
                                "results would share one name; rename one of them")
            out[stem] = p
    return out


def pair_folders(generated: Path, reference: Path, audio: Optional[Path] = None) -> list[tuple[Path, Path, Optional[Path]]]:
    """Pairs of (generated, reference, audio) by file stem. Raises :class:`UserError` when nothing pairs up, or when
    a result's reference (or speech) is one of two files of its name."""
    for p, what in ((generated, "generated"), (reference, "reference"), (audio, "audio")):
        if p is not None and p.is_file():  # one file beside a folder: the pairs are made by name, folder to folder
            raise UserError(f"{p} is a file: with a folder of results ({generated}) --reference (and --audio) "
                            "must be folders too, their files paired with the results by name")
        if p is not None and not p.is_dir():
            raise UserError(f"{what} folder not found: {p}{near_name_hint(str(p))}")
    gens = _media_in(generated, VIDEO_SUFFIXES)
    ref_twins: dict[str, list[str]] = {}
    refs = _media_in(reference, VIDEO_SUFFIXES, ref_twins)
    photo_twins: dict[str, list[str]] = {}
    for stem, photo in _media_in(reference, tuple(sorted(IMAGE_SUFFIXES)), photo_twins).items():  # a photo made a
        refs.setdefault(stem, photo)  # talking video: its reference is that photo, as for one pair (a video first)
    for stem, names in photo_twins.items():
        if refs[stem].suffix.lower() in IMAGE_SUFFIXES:  # (beside a video of the name, the photos are not used)
            ref_twins.setdefault(stem, names)
    aud_twins: dict[str, list[str]] = {}
    auds = _media_in(audio, AUDIO_SUFFIXES + VIDEO_SUFFIXES, aud_twins) if audio is not None else {}
    for folder, twins in ((reference, ref_twins), (audio, aud_twins)):
        for stem in sorted(set(twins) & set(gens)):  # (files no result is named after are left alone)
            raise UserError(f"{folder} holds two files named {stem} ({', '.join(twins[stem])}) for the result "
                            f"{gens[stem].name}: rename or move all but one of them")
    pairs = [(gens[s], refs[s], auds.get(s)) for s in sorted(gens) if s in refs]
    if not pairs:
        raise UserError(f"no videos of {generated} have a reference of the same name in {reference} "
                        f"({len(gens)} generated, {len(refs)} reference files)")
    alone = [gens[s].name for s in sorted(gens) if s not in refs]
    if alone:
        warn(f"{len(alone)} of the videos in {generated} have no reference of the same name in {reference} and are "
             f"left out: {', '.join(alone[:5])}{' ...' if len(alone) > 5 else ''}")
    return pairs


SHIFTED_CRF = 10  # shifted copies of a clip are re-encoded nearly losslessly
# a clip made from its frames shifted by half their number (shifted_copy) shows their pose and light: these would
# compare different moments of the footage with each other, so they are left out ...
SHIFT_BLIND = ("psnr_face", "psnr_mouth", "ssim_face", "ssim_mouth", "lmd", "delta_e", "delta_e_pixel")
# ... except the colour shift, measured against the shifted frames instead: the colour the method itself changed
SHIFT_COLOUR = ("delta_e", "delta_e_pixel")
SHIFT_NOTE = ("not applicable: the clip was made from its own frames shifted by half their number (--shift-source), so "
              "this would compare different moments of the footage")


def against_shifted_source(res: ClipResult, source: Path, audio, **kw) -> ClipResult:
    """``res`` (:func:`evaluate_pair` of a clip generated from ``source``, its reference's frames shifted by
    :func:`shifted_copy`, with the speech ``audio``) with :data:`SHIFT_BLIND` left out and the colour shift
    (:data:`SHIFT_COLOUR`, figures and per-frame series) measured against ``source``'s frames, which the generated
    ones were made from. ``kw`` go to :func:`evaluate_pair` (its sync scores are not needed here: not asked for)."""
    kw = {k: v for k, v in kw.items() if k not in ("syncnet", "expert", "syncnet_model", "expert_model", "protocol")}
    kw["perceptual"] = False
    made = evaluate_pair(res.generated, source, audio, protocol="self", **kw)
    for k in SHIFT_BLIND:
        res.metrics[k] = None
        res.notes[k] = SHIFT_NOTE
        res.series.pop(k, None)
    for k in SHIFT_COLOUR:
        res.metrics[k] = made.metrics.get(k)
        res.notes.pop(k, None)
        if k in made.series:
            res.series[k] = made.series[k]
    res.shifted_source = True
    return res


def shifted_copy(video: Path, dst: Path, start: int = 0, stop: int | None = None, fps: float | None = None) -> Path:
    """The frames [start, stop) of ``video`` shifted by half their number, wrapping round (frame j shows frame
    start + (j + n // 2) % n), without audio, at ``fps`` (default the video's own: its average rate when the rate
    varies, frames counted by timestamps as every job counts them, so the copy lasts as long as the clip).
    Self-reconstruction from such a copy and the clip's own speech keeps every trace of the mouth to be predicted out
    of the input: a generator that uses the frame's own mouth (``--mouth warp`` or ``hybrid``) would otherwise be
    handed the answer."""
    from ..media.timing import RetimedReader
    from ..media.writer import VideoWriter

    with RetimedReader(video, fps) as reader:
        frames = [fr.image for fr in reader.iter_range(start, stop)]
        width, height, rate = reader.width, reader.height, reader.fps
    if not frames:
        raise UserError(f"no frames could be decoded from {video}")
    n = len(frames)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(dst, width, height, rate, crf=SHIFTED_CRF) as w:
        for j in range(n):
            w.write(frames[(j + n // 2) % n])
    return dst


@contextlib.contextmanager
def seam_unsaid(shifted: bool):
    """While a shifted copy (:func:`shifted_copy`) is synced: its wrap-round is a cut of the copy's own, which sync
    would warn of as the user's video cutting to another shot, with advice on editing it. (A real cut in the clip
    is said by the runs on the clip itself.)"""
    import warnings

    from ..errors import InputWarning

    with warnings.catch_warnings():
        if shifted:
            warnings.filterwarnings("ignore", message="the video cuts to another shot", category=InputWarning)
        yield


def run_protocol(clips: Path, out_dir: Path, mode: str, *, checkpoint=None, hr_checkpoint=None, size=None,
                 untrained: bool = False, device: str = "auto", batch_size: int = 16, max_seconds: float | None = None,
                 progress: bool = False, temporal_blend: float = DEFAULT_BLEND, mouth: str = "auto",
                 shift_source: bool = False, left_out: list | None = None, **eval_kw) -> list[ClipResult]:
    """Generate and evaluate every clip of a folder: ``mode="self"`` syncs each clip to its own audio,
    ``mode="cross"`` to the next clip's audio (in name order, wrapping round). Outputs go to ``out_dir/generated``.
    ``device`` serves generation and evaluation alike; ``eval_kw`` go to :func:`evaluate_pair`. ``mouth``: the
    LipSync's; ``shift_source`` (always when the frame's own mouth is used: ``warp``, ``hybrid``):
    self-reconstruction from :func:`shifted_copy`. ``left_out``: gets (clip name, reason) of each clip that could
    not be measured (no face, no sound), for the report to list."""
    from ..pipeline import LipSync

    if mode not in ("self", "cross"):
        raise UserError(f"protocol must be self or cross (got {mode!r})")
    if clips.is_file() and mode == "self":
        videos = [clips]  # one clip with its own audio
    elif clips.is_file():
        raise UserError(f"--clips {clips} is one video; the cross protocol syncs each clip of a folder to the next "
                        "one's audio, so it needs a folder of at least 2 (for one clip and other speech: hyperlips "
                        "sync, then hyperlips eval RESULT --reference VIDEO --audio SPEECH)")
    elif not clips.is_dir():
        raise UserError(f"clips folder not found: {clips}{near_name_hint(str(clips))}")
    else:
        videos = list(_media_in(clips, VIDEO_SUFFIXES).values())
    if not videos or (mode == "cross" and len(videos) < 2):
        raise UserError(f"{clips} holds {len(videos)} videos; the {mode} protocol needs at least {2 if mode == 'cross' else 1}")
    ls = LipSync(checkpoint, hr_checkpoint, size=size, device=device, batch_size=batch_size, untrained=untrained,
                 progress=progress, temporal_blend=temporal_blend, mouth=mouth)
    shift = mode == "self" and (shift_source or ls.mouth != "render")
    eval_kw["device"] = str(ls.device)
    gen_dir = out_dir / "generated"
    gen_dir.mkdir(parents=True, exist_ok=True)
    mark_report(out_dir)  # (the videos it writes there are no footage)
    results = []
    for i, clip in enumerate(videos):
        speech = clip if mode == "self" else videos[(i + 1) % len(videos)]
        src_audio, source = speech, clip
        out = gen_dir / f"{clip.stem}.mp4"
        try:
            if max_seconds:
                src_audio = _cut_audio(speech, gen_dir / f".clip{i}_audio.wav", max_seconds)  # (named by number: a
            if shift:  # name of 255 bytes has no room for more)
                source = shifted_copy(clip, gen_dir / f".clip{i}_shifted.mp4")
            with seam_unsaid(shift):
                ls.sync(source, src_audio, out, face_index=eval_kw.get("face_index"),
                        face_box=eval_kw.get("face_box"))
            res = evaluate_pair(out, clip, src_audio, protocol=mode, max_seconds=max_seconds, progress=progress,
                                **eval_kw)
            if shift:
                res = against_shifted_source(res, source, src_audio, max_seconds=max_seconds, progress=progress,
                                             **eval_kw)
            results.append(res)
        except UserError as e:  # one clip that cannot be used (no sound, no face): the others are still measured
            if len(videos) == 1:
                raise
            why = str(e).replace(str(source), str(clip))  # (the shifted copy is gone: the clip is named)
            warn(f"{clip} is left out of the evaluation: {why}")
            if left_out is not None:
                left_out.append((clip.stem, why))
        finally:
            if src_audio != speech:  # the cut speech was only needed to generate and score this clip
                src_audio.unlink(missing_ok=True)
            if source != clip:
                source.unlink(missing_ok=True)
    if not results:
        raise UserError(f"none of the {len(videos)} clips in {clips} could be evaluated (each said why above)")
    return results


def _cut_audio(src: Path, dst: Path, seconds: float) -> Path:
    from ..media.audio import load_audio, write_wav

    wav = load_audio(src, 16000)[: int(seconds * 16000)]
    write_wav(dst, wav, 16000)
    return dst
