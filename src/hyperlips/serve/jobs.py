"""Turning a request into a queued job (every option checked, inputs linked into the job's folder), and a job
into what the API shows.

A job's folder (``<data>/jobs/<id>/``) holds everything its worker needs: ``job.json`` and the inputs under
fixed names (``video.<suffix>``, ``audio.<suffix>``), so the uploads may expire while the job waits.
"""

from __future__ import annotations

import json
import unicodedata
import math
import re
import shutil
import sqlite3
from pathlib import Path

from ..errors import UserError, collect_warnings
from ..media.phone_marks import marks_from_json, marks_from_text, write_marks
from ..mouth import MOUTH_OPTIONS
from ..schedule import LOOP_MODES
from .catalog import UNTRAINED_ID, find_model, list_models
from .runner import job_folder
from .settings import ServeSettings
from .store import FINISHED, Store, new_id, storage_full, valid_id
from .uploads import UploadError, check_role, link_into, longest_seconds

KINDS = ("sync", "finetune")
FIELDS = {  # what a job of each kind takes; anything else is a mistake (a misspelt option would pass unnoticed)
    "sync": {"kind", "video", "audio", "model", "size", "face", "face_box", "loop", "reference", "crf", "preset",
             "pix_fmt", "temporal_blend", "mouth", "phonemes"},
    "finetune": {"kind", "video", "name", "minutes", "start_from", "face", "face_box"},
}
# The least time budget of a training job. finetune keeps RESERVE_S (20 s: the last validation, writing the model) and
# MIN_TRAIN_S (30 s of training) of it besides preparing the footage: 1 minute left 10 s to prepare it, and worked or
# failed by the machine's load; 2 leave 70 s, room for a short clip (longer footage takes longer, which the page says)
MIN_TRAIN_MINUTES = 2.0
DEFAULT_TRAIN_MINUTES = 10.0  # a training request's budget when it gives none (at most the server's longest)
_MODEL_NAME = re.compile(r"^[^\W_](?:[\w -]{0,46}[\w-])?\Z")  # letters of any script, digits, spaces inside, - and _


def _bad(text: str) -> UploadError:
    return UploadError(text)


def _file(store: Store, params: dict, key: str, what: str, max_seconds: float = float("inf")) -> dict:
    file_id = params.get(key)
    if file_id is not None and file_id != "" and not isinstance(file_id, str):
        raise _bad(f"{key} must be the id of an uploaded file, a string (got {json.dumps(file_id)[:40]})")
    if not file_id:
        raise _bad(f"no {what} given: upload one (POST /api/files) and pass its id as {key!r}")
    rec = store.get_file(file_id) if valid_id(file_id) else None
    if rec is None:
        raise _bad(f"{key}: no uploaded file has the id {file_id[:40]!r} (uploads are deleted after a while: upload it again)")
    if rec["example"] and longest_seconds(rec) > max_seconds:  # uploads were held to it when they came in
        raise _bad(f"{key}: the example {rec['name']} is {longest_seconds(rec):.1f} s long; this server takes at most "
                   f"{max_seconds:g} s")
    return rec


def _whole(v):
    """``v`` as a whole number where it is written as one: an int, a float such as 128.0 (JSON from some languages
    writes every number so) or a string of decimal digits (a form's field), spaces round it allowed; anything else
    as it is, for the caller to refuse in its own words. (Laxer than ``streaming.whole_number``, which checks what
    Python code passes: JSON and forms write numbers as these.)"""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().isdecimal():  # (not isdigit: "²" is a digit int() cannot read)
        return int(v.strip())
    return v


def _int_or_none(params: dict, key: str, lo: int, hi: int) -> int | None:
    v = params.get(key)
    if v is None or v == "":
        return None
    v = _whole(v)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(f"{key} must be a whole number from {lo} to {hi} (got {v!r})")
    return v


def _face_choice(params: dict, video: dict | None = None) -> tuple[int | None, list | None]:
    """A job's ``face`` (counted from the left) or ``face_box`` ([x1, y1, x2, y2]): the person to follow or learn;
    a box outside the ``video`` upload's frame is refused now (it failed only once the job ran)."""
    face = _int_or_none(params, "face", 0, 64)
    box = params.get("face_box")
    if box is not None:
        ok = isinstance(box, list) and len(box) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        if not ok or box[2] <= box[0] or box[3] <= box[1]:
            raise _bad("face_box must be [x1, y1, x2, y2] in pixels, finite, with x2 > x1 and y2 > y1")
        if face is not None:
            raise _bad("give face or face_box, not both")
        facts = (video or {}).get("facts") or {}
        w, h = facts.get("width"), facts.get("height")
        if w and h and (box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h):
            raise _bad(f"face_box {json.dumps(box)} lies outside the {w}x{h} picture of {video.get('name')}: give "
                       "pixel coordinates inside it")
    return face, box


def submit(settings: ServeSettings, store: Store, params: dict) -> dict:
    """Check ``params`` (the JSON body of ``POST /api/jobs``), prepare the job's folder and queue the job."""
    if not isinstance(params, dict):
        raise _bad("the request body must be a JSON object")
    kind = params.get("kind", "sync")
    if kind not in KINDS:
        raise _bad(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    unknown = sorted(str(k) for k in params if k not in FIELDS[kind])
    if unknown:
        raise _bad(f"a {kind} job takes no {', '.join(repr(k[:40]) for k in unknown[:5])} (it takes: "
                   f"{', '.join(sorted(FIELDS[kind] - {'kind'}))})")
    job_id = new_id()
    folder = job_folder(settings, job_id)
    try:
        folder.mkdir(parents=True)
        try:
            job, public = (_finetune(settings, store, params, folder) if kind == "finetune"
                           else _sync(settings, store, params, folder))
            (folder / "job.json").write_text(json.dumps({"kind": kind, **job}, indent=1), encoding="utf-8")
            return store.add_job(job_id, kind, public)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    except (OSError, sqlite3.OperationalError) as e:  # a full disk (or its quota): the uploads' answer, not "a bug"
        if not storage_full(e):
            raise
        raise UploadError(f"the server could not store the job: {getattr(e, 'strerror', None) or e}; try again "
                          "later", status=507) from None


def _sync(settings: ServeSettings, store: Store, params: dict, folder: Path) -> tuple[dict, dict]:
    video = _file(store, params, "video", "video or photo", settings.max_seconds)
    audio = _file(store, params, "audio", "speech file", settings.max_seconds)
    check_role(video, "video")
    check_role(audio, "audio")
    model_id = params.get("model") or list_models(settings)[0].id
    model = find_model(settings, str(model_id))
    if model is None:
        ids = ", ".join(m.id for m in list_models(settings))
        raise _bad(f"model: no model {str(model_id)[:80]!r} on this server (choose one of: {ids})")
    size = params.get("size")
    warped = params.get("mouth") == "warp"  # the frame's own lips: no HR decoder to sharpen them
    if size in (None, ""):
        size = 128 if model.id == UNTRAINED_ID or warped else max(model.sizes)
    size = _whole(size)
    if isinstance(size, bool) or size not in model.sizes:
        raise _bad(f"size: {model.id} renders at {', '.join(map(str, model.sizes))} px (got {size!r})")
    if warped and size != 128:
        raise _bad(f"size {size} sharpens a rendered mouth with an HR decoder; mouth warp moves the frame's own lips "
                   "(size 128, or mouth render or hybrid)")
    face, box = _face_choice(params, video)
    loop = params.get("loop") or "pingpong"
    if loop not in LOOP_MODES:
        raise _bad(f"loop must be one of {', '.join(LOOP_MODES)} (got {loop!r})")
    reference = _whole(params.get("reference", "best"))
    if not (reference in ("best", "first") or (isinstance(reference, int) and not isinstance(reference, bool)
                                                and reference >= 0)):
        raise _bad(f"reference must be best, first or a frame number (got {reference!r})")
    frames = video["facts"].get("frames")
    if isinstance(reference, int) and isinstance(frames, int) and reference >= frames:  # (said only by the job, a
        raise _bad(f"reference {reference}: {video['name']} has {frames} frame(s), numbered from 0; give a frame "
                   f"number below {frames}, best or first")  # moment later, in the command line's words)
    crf, preset, pix_fmt = _encoding(params)
    blend = _temporal_blend(params)
    mouth = params.get("mouth") or "auto"
    if mouth not in MOUTH_OPTIONS:
        raise _bad(f"mouth must be one of {', '.join(MOUTH_OPTIONS)} (got {mouth!r})")
    if mouth in ("warp", "hybrid") and model.id == UNTRAINED_ID:
        raise _bad(f"mouth {mouth} moves the mouth to the shape a trained HyperLips-Lite reads from the speech; "
                   "the untrained model has none (use render)")
    if mouth in ("warp", "hybrid") and _network_of(model.checkpoint) == "hyperlips-base":
        raise _bad(f"mouth {mouth} moves the mouth to the shape HyperLips-Lite reads from the speech; {model.label} is "
                   "HyperLips-Base, which reads no shape (use render or auto)")
    marks = _phonemes(params, audio["facts"].get("audio_seconds"))
    v_path = link_into(video, settings, folder, "video")
    a_path = link_into(audio, settings, folder, "audio")
    if marks is not None:
        write_marks(folder / "phonemes.txt", marks)
    hr = model.hr.get(size)  # (an HR decoder of 128 px sharpens the 128 px face too)
    job = {
        "video": v_path.name, "audio": a_path.name,
        "names": {v_path.name: video["name"], a_path.name: audio["name"], **_model_names(model, hr, size)},
        "model": {"checkpoint": str(model.checkpoint) if model.checkpoint else None,
                  "hr_checkpoint": str(hr) if hr else None, "untrained": model.id == UNTRAINED_ID},
        "size": size, "face": face, "face_box": box, "loop": loop, "reference": reference,
        "crf": crf, "preset": preset, "pix_fmt": pix_fmt, "temporal_blend": blend, "mouth": mouth, "device": settings.device, "batch_size": settings.batch_size, "threads": settings.threads,
        "phonemes": "phonemes.txt" if marks is not None else None,
    }
    public = {"video": video["id"], "audio": audio["id"], "video_name": video["name"], "audio_name": audio["name"],
              "model": model.id, "model_label": model.label, "size": size, "face": face, "face_box": box,
              "loop": loop, "reference": reference, "crf": crf, "preset": preset, "pix_fmt": pix_fmt,
              "temporal_blend": blend, "mouth": mouth, "phonemes": None if marks is None else len(marks)}
    return job, public


MAX_PHONEMES = 100_000  # about two hours of speech


def _network_of(checkpoint) -> str | None:
    """The network a model's safetensors file holds ("hyperlips-lite", "hyperlips-base"), as its metadata says; None
    for another file (a .pth: the job finds out when it loads it)."""
    if checkpoint is None or Path(checkpoint).suffix.lower() != ".safetensors":
        return None
    path = Path(checkpoint)
    try:
        from ..models.metadata import read_metadata

        return read_metadata(path).get("name")
    except Exception:  # unreadable here: the job says why when it loads it
        return None


def _phonemes(params: dict, seconds: float | None = None):
    """The job's phoneme timings, checked, or None: ``media.phone_marks``' JSON form, or the text of a file in any
    of its formats (lines, JSON, a TextGrid: what a page reads from a file the user picks). ``seconds``: the
    speech's length, to which a last phoneme without an end lasts (as ``sync --phonemes`` reads it)."""
    data = params.get("phonemes")
    if data is None:
        return None
    if isinstance(data, str):
        if len(data) > 50 * MAX_PHONEMES:
            raise _bad(f"phonemes: at most {MAX_PHONEMES} are taken")
        if re.search(r"[\x00-\x08\x0e-\x1f]", data):  # a picture's bytes read as text ("got '\x14'")
            raise _bad("phonemes: not a text file (a phoneme file is text: lines of START [END] PHONE, JSON or a "
                       "Praat TextGrid)")
        try:
            return marks_from_text(data, seconds)
        except UserError as e:
            raise _bad(f"phonemes: {e}") from None
    if not isinstance(data, (list, dict)):
        raise _bad('phonemes must be a list of {"start": seconds, "phone": "B"} objects (or {"alphabet": ..., '
                   '"phonemes": [...]}, or the text of a phoneme file)')
    listed = data.get("phonemes") if isinstance(data, dict) else data
    if isinstance(listed, list) and len(listed) > MAX_PHONEMES:
        raise _bad(f"phonemes: at most {MAX_PHONEMES} are taken")
    try:
        return marks_from_json(data, seconds)
    except UserError as e:
        raise _bad(f"phonemes: {e}") from None


def check_phonemes(store: Store, params: dict) -> dict:
    """``POST /api/phonemes``: phoneme timings read as a sync job reads them, and no job queued (the page checks a
    phoneme file as it is chosen, as the server checks a video or a speech file as it arrives). ``audio``, an
    uploaded speech file's id, gives the speech's length where it is known. How many, from when to when, and what
    reading them warned of; the job's reason when they cannot be read."""
    if not isinstance(params, dict):
        raise _bad("the request body must be a JSON object")
    unknown = sorted(str(k) for k in params if k not in ("phonemes", "audio"))
    if unknown:
        raise _bad(f"a phoneme check takes no {', '.join(repr(k[:40]) for k in unknown[:5])} (it takes: audio, "
                   "phonemes)")
    if params.get("phonemes") is None:
        raise _bad("phonemes: none given (the text of a phoneme file, or a list of {\"start\": seconds, \"phone\": "
                   "\"B\"} objects)")
    seconds = None
    if params.get("audio"):
        audio = _file(store, params, "audio", "speech file")
        seconds = audio["facts"].get("audio_seconds")
    with collect_warnings() as said:
        marks = _phonemes(params, seconds)
    return {"phonemes": len(marks), "start": marks[0].start, "end": marks[-1].end, "warnings": said}


def _encoding(params: dict) -> tuple[int, str, str]:
    """The output's encoder settings (as ``sync --crf/--preset/--pix-fmt``), checked like the command line's."""
    from ..errors import UserError
    from ..media.writer import DEFAULT_CRF, DEFAULT_PIX_FMT, DEFAULT_PRESET, check_encoding

    crf = params.get("crf")
    crf = DEFAULT_CRF if crf in (None, "") else _whole(crf)
    preset = params.get("preset") or DEFAULT_PRESET
    pix_fmt = params.get("pix_fmt") or DEFAULT_PIX_FMT
    try:
        check_encoding(crf, preset, pix_fmt, names=("crf", "preset", "pix_fmt"))
    except UserError as e:
        raise _bad(str(e)) from None
    return int(crf), str(preset), str(pix_fmt)


def _temporal_blend(params: dict) -> float:
    """The weight of each neighbouring frame's face (as ``sync --temporal-blend``), checked like the command line's."""
    from ..face.steady import DEFAULT_WEIGHT, check_weight

    value = params.get("temporal_blend")
    if value in (None, ""):
        return DEFAULT_WEIGHT
    try:
        if isinstance(value, bool):
            raise ValueError
        return check_weight(float(value))
    except (TypeError, ValueError):
        raise _bad(f"temporal_blend must be a number from 0 (off) to 1/3 (got {value!r})") from None


def _finetune(settings: ServeSettings, store: Store, params: dict, folder: Path) -> tuple[dict, dict]:
    video = _file(store, params, "video", "video of the person", settings.max_seconds)
    facts = video["facts"]
    if facts["is_image"] or not facts["has_video"]:
        raise _bad(f"{video['name']}: a person model is trained from a video of the person talking "
                   f"(with their own voice), not from {'a photo' if facts['is_image'] else 'sound alone'}")
    check_role(video, "audio")
    name = params.get("name")
    if isinstance(name, str):  # a Mac's decomposed é is a letter too (its combining mark is no \w of its own)
        name = unicodedata.normalize("NFC", name)
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise _bad("name: give the model a name of letters, digits, spaces, - and _ (at most 48, starting with a "
                   "letter or digit)")
    minutes = params.get("minutes", min(DEFAULT_TRAIN_MINUTES, settings.max_train_minutes))  # (a server allowing
    try:  # less than the default refused every request leaving it out)
        minutes = -1.0 if isinstance(minutes, bool) else float(minutes)  # (true was a minute)
    except (TypeError, ValueError):
        minutes = -1.0
    if not MIN_TRAIN_MINUTES <= minutes <= settings.max_train_minutes:  # (less: taken, then refused by the training
        raise _bad(f"minutes: the time budget must be at least {MIN_TRAIN_MINUTES:g} and at most "
                   f"{settings.max_train_minutes:g} minutes "
                   "(preparing the footage, the last validation and writing the model take part of it)")
    # left out: finetune's default (the shipped starter, where there is one); null, "" or "untrained": random weights
    start = params.get("start_from", "default")
    checkpoint = None
    scratch = start in (None, "", UNTRAINED_ID)
    if not scratch and start != "default":
        model = find_model(settings, str(start))
        if model is None:
            raise _bad(f"start_from: no model {str(start)[:80]!r} on this server")
        checkpoint = str(model.checkpoint)
    v_path = link_into(video, settings, folder, "video")
    shown = {checkpoint: f"the model {start}"} if checkpoint else {}  # a message names the model, not its path
    face, box = _face_choice(params, video)  # the person to learn, where the footage shows several
    job = {"video": v_path.name, "names": {v_path.name: video["name"], **shown}, "minutes": minutes, "checkpoint": checkpoint,
           "from_scratch": scratch, "command": list(settings.finetune_command), "face": face, "face_box": box}
    public = {"video": video["id"], "video_name": video["name"], "name": name, "minutes": minutes,
              "start_from": None if scratch else start, "face": face, "face_box": box}
    return job, public


def _model_names(model, hr, size: int) -> dict[str, str]:
    """A model's files as a job's messages name them: by the model's id, not by where the server keeps them."""
    names = {str(model.checkpoint): f"the model {model.id}"} if model.checkpoint else {}
    if hr:
        names[str(hr)] = f"the model {model.id}'s HR decoder ({size} px)"
    return names


def public_job(job: dict) -> dict:
    """A job as the API shows it: state, stage, progress, the failure reason, and links."""
    base = f"/api/jobs/{job['id']}"
    out = {k: job[k] for k in ("id", "kind", "state", "params", "progress", "message", "created", "started",
                               "finished", "attempts")}
    out["stage"] = job["progress"].get("stage", job["state"]) if job["state"] == "running" else job["state"]
    out["fraction"] = 1.0 if job["state"] == "done" else float(job["progress"].get("fraction") or 0.0)
    for key in ("queue_position", "running_ahead"):  # (queued jobs)
        if key in job:
            out[key] = job[key]
    out["links"] = {"self": base, "log": f"{base}/log"}
    if job["state"] not in FINISHED:  # (a finished job has nothing to cancel)
        out["links"]["cancel"] = f"{base}/cancel"
    if job["kind"] == "finetune":
        out["links"]["preview"] = f"{base}/preview"
        if isinstance(out["progress"], dict) and out["progress"].get("preview"):  # where the server keeps it: the
            out["progress"] = {**out["progress"], "preview": f"{base}/preview"}  # link to it instead
    result = job.get("result")
    if job["state"] == "done" and result:
        out["result"] = dict(result)
        if job["kind"] == "sync":
            out["result"]["url"] = f"{base}/result"
            out["result"]["download_url"] = f"{base}/result?download=1"
            out["links"]["result"] = f"{base}/result"
    return out
