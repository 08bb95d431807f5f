"""One job, in its own process: ``python -m hyperlips.serve.worker JOB_FOLDER``.

The folder holds ``job.json`` (what to do, written by the server) and the inputs. The worker writes:

- ``progress.json``: ``stage``, ``done``/``total`` frames of the stage, ``fraction`` of the whole job in 0..1,
  ``elapsed_s``, ``eta_s``, ``stages`` (each stage seen so far and its seconds) (replaced atomically, a few times a
  second at most);
- ``result.mp4`` + ``result.json`` (sync; its ``warnings``: what the command line would have warned of) or
  ``work/model.safetensors`` + ``result.json`` (training) on success;
- ``error.txt`` with the command line's one-line reason (the stored file names replaced by the uploaded ones)
  when the input is at fault, then exits with code 2.

A training job runs the finetune command as a child process; its own progress goes to ``work/progress.json``
(which the server reads). The worker leads its own process group: the server cancels a job by killing that
group, and the worker kills it too if the server dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

from ..errors import InputWarning, one_line

# share of the whole sync job each stage takes (roughly, on a CPU): loading, finding the reference face in the first
# seconds of the video, generating (decoding, faces, network, paste-back and encoding at the same time)
SYNC_STAGES = {"loading": (0.0, 0.05), "faces": (0.05, 0.1), "lip-sync": (0.1, 0.99)}


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


class SyncProgress:
    """Turns the pipeline's (stage, done, total) calls into ``progress.json``, at most every ``every`` seconds."""

    def __init__(self, path: Path, every: float = 0.25) -> None:
        self.path, self.every = path, every
        self.t0 = time.monotonic()
        self.last = 0.0
        self.stage_t0: dict[str, float] = {}
        self.stage_t1: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        self.stage_t0.setdefault(stage, now)
        self.stage_t1[stage] = now
        if now - self.last < self.every and done not in (0, total):
            return
        self.last = now
        lo, hi = SYNC_STAGES.get(stage, (0.0, 1.0))
        part = min(1.0, done / total) if total else 0.0
        eta = None
        if done > 0 and total and stage != "faces":  # the reference search says nothing of the lip-sync pass's length
            spent = now - self.stage_t0[stage]
            eta = spent / done * max(total - done, 0)
        write_json(self.path, {"stage": stage, "done": done, "total": total,
                               "fraction": round(lo + (hi - lo) * part, 4), "elapsed_s": round(now - self.t0, 2),
                               "eta_s": None if eta is None else round(eta, 1),
                               # every stage seen so far and its seconds: a short one stays on record after it ends
                               "stages": {k: round(self.stage_t1[k] - t0, 2) for k, t0 in self.stage_t0.items()}})


def _public_message(text: str, names: dict[str, str]) -> str:
    """``text`` with the job folder's paths (longest first) replaced by the names the user knows."""
    for stored in sorted(names, key=len, reverse=True):
        text = text.replace(stored, names[stored])
    return one_line(text)


def run_sync(job: dict, folder: Path) -> dict:
    from ..pipeline import LipSync

    progress = SyncProgress(folder / "progress.json")
    progress("loading", 0, 1)
    if job.get("threads"):
        import torch

        torch.set_num_threads(int(job["threads"]))
    model = job["model"]
    box = job.get("face_box")
    with warnings.catch_warnings(record=True) as caught:  # what the command line warns of, the job reports (the
        warnings.simplefilter("always", InputWarning)  # model's own warnings too: made in here)
        ls = LipSync(model.get("checkpoint"), model.get("hr_checkpoint"), size=job.get("size"),
                     device=job.get("device", "auto"), batch_size=int(job.get("batch_size", 16)),
                     untrained=bool(model.get("untrained")), progress=False,
                     **({"temporal_blend": float(job["temporal_blend"])} if "temporal_blend" in job else {}),
                     **({"mouth": job["mouth"]} if "mouth" in job else {}))  # jobs queued before: the default
        progress("loading", 1, 1)
        report = ls.sync(folder / job["video"], folder / job["audio"], folder / "result.mp4",
                         face_index=job.get("face"), face_box=tuple(box) if box else None,
                         loop=job.get("loop", "pingpong"), reference=job.get("reference", "best"),
                         on_progress=progress, phonemes=folder / job["phonemes"] if job.get("phonemes") else None,
                         **{k: job[k] for k in ("crf", "preset", "pix_fmt") if k in job})  # jobs queued before: defaults
    said = []
    for w in caught:
        if issubclass(w.category, InputWarning):
            said.append(str(w.message))
        else:  # the others to the log, as they would have gone
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return {"file": "result.mp4", "frames": report.frames, "fps": report.fps, "width": report.width,
            "height": report.height, "seconds": round(report.audio_seconds, 3),
            "frames_with_face": report.frames_with_face,
            "timings": {k: round(v, 2) for k, v in report.timings.items()}, "warnings": list(dict.fromkeys(said))}


def run_finetune(job: dict, folder: Path) -> dict:
    from ..errors import UserError

    work = folder / "work"
    work.mkdir(exist_ok=True)
    model = work / "model.safetensors"
    cmd = [*job["command"], str(folder / job["video"]), "-o", str(model), "--work", str(work),
           "--minutes", f"{float(job['minutes']):g}"]
    if job.get("checkpoint"):
        cmd += ["--checkpoint", str(job["checkpoint"])]
    elif job.get("from_scratch"):
        cmd += ["--from-scratch"]
    if job.get("face") is not None:
        cmd += ["--face", str(int(job["face"]))]
    elif job.get("face_box") is not None:
        cmd += [f"--face-box={','.join(f'{float(v):g}' for v in job['face_box'])}"]
    # until the command's own first report (it writes one once training starts): preparing the footage
    write_json(work / "progress.json", {"stage": "preprocess", "step": 0, "elapsed_s": 0.0, "eta_s": None,
                                        "fraction": 0.0, "val": {}, "preview": None})
    err_path = folder / "finetune.stderr"
    with open(err_path, "wb") as err:  # kept for the failure's reason, and copied to the job's log as it comes
        proc = subprocess.Popen(cmd, stdout=sys.stdout, stderr=subprocess.PIPE, cwd=folder)
        log = getattr(sys.stderr, "buffer", None)
        warned: list[str] = []  # what the command warned of (two people in view, ...), from the whole log: the
        pending = b""  # footage's warnings come first, long before the tail kept below
        while chunk := os.read(proc.stderr.fileno(), 65536):
            err.write(chunk)
            err.flush()
            if log is not None:
                log.write(chunk)
                log.flush()
            *whole, pending = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
            pending = pending[-65536:]
            warned += [ln.decode("utf-8", "replace").split("warning:", 1)[1].strip() for ln in whole
                       if ln.startswith(b"hyperlips: warning:")]
        if pending.startswith(b"hyperlips: warning:"):
            warned.append(pending.decode("utf-8", "replace").split("warning:", 1)[1].strip())
        proc.stderr.close()
        rc = proc.wait()
    tail = err_path.read_bytes()[-65536:].decode("utf-8", "replace")
    if log is None:
        sys.stderr.write(tail)
    if rc != 0:
        lines = [ln for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
        said = [ln.split("error:", 1)[1].strip() for ln in lines if ln.startswith("hyperlips: error:")]
        if said:
            raise UserError(said[-1])
        last = lines[-1].strip() if lines else ""
        how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"stopped with exit code {rc}"
        raise UserError(f"training {how}" + (f": {last[:300]}" if last else ""))
    if not model.is_file():
        raise UserError("training finished without writing a model")
    hr = {p.name.split(".hr")[1].split(".")[0]: p.relative_to(folder).as_posix()
          for p in work.glob("model.hr*.safetensors")}
    return {"model_file": model.relative_to(folder).as_posix(), "hr_files": hr,
            "warnings": list(dict.fromkeys(warned))}


def _watch_parent(parent: int) -> None:
    """Stop this job (the whole process group) when the server that started it is gone."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    from ..errors import UserError, gpu_out_of_memory, out_of_memory

    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0])
    job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    parent = int(os.environ.get("HYPERLIPS_SERVE_PARENT", "0"))
    if parent:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    names = {str(folder / k): v for k, v in job.get("names", {}).items()}
    names[str(folder / "result.mp4")] = "the result"
    names[str(folder)] = "the job's folder"
    try:
        result = run_finetune(job, folder) if job["kind"] == "finetune" else run_sync(job, folder)
    except UserError as e:
        (folder / "error.txt").write_text(_public_message(str(e), names) + "\n", encoding="utf-8")
        print(f"hyperlips: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - out of memory, from whichever library met it; anything else is a bug
        if not out_of_memory(e):
            raise
        why = ("the job ran out of GPU memory: try a shorter or smaller video (or start the server with --device cpu)"
               if gpu_out_of_memory(e) else "the job ran out of memory: try a shorter or smaller video")
        (folder / "error.txt").write_text(why + "\n", encoding="utf-8")
        traceback.print_exc()
        return 1
    if result.get("warnings"):
        result["warnings"] = [_public_message(w, names) for w in result["warnings"]]
        for w in result["warnings"] if job["kind"] != "finetune" else ():  # (training's are in the log already)
            print(f"hyperlips: warning: {w}", file=sys.stderr)
    write_json(folder / "result.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
