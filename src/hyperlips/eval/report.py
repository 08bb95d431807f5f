"""Evaluation reports: JSON (every number and per-frame curve), Markdown that embeds matplotlib PNG plots.

Files written for one clip (in its output folder): ``report.json``, ``report.md``, ``per_frame.png`` (per-frame
curves), ``mouth_audio.png`` (mouth opening against audio loudness), ``mouth_sheet.png`` (contact sheet of mouth
crops, generated above reference) and, when a sync score was computed, ``sync.png`` (score against audio offset).
A batch adds ``summary.json`` / ``summary.md`` with the per-clip and aggregate tables.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..data.sources import mark_report

from .pair import ClipResult
from .sync_score import SyncResult

# metric key -> (label, unit/direction, region & protocol)
DEFINITIONS: dict[str, tuple[str, str, str]] = {
    "psnr_face": ("PSNR face", "dB, higher is better (100 = identical)",
                  "face region (the track crop box, 256x256) of generated vs reference; self-reconstruction only"),
    "psnr_mouth": ("PSNR mouth", "dB, higher is better (100 = identical)",
                   "mouth box (1.6 x 1.0 mouth widths round the reference lips); self-reconstruction only"),
    "ssim_face": ("SSIM face", "0..1, higher is better", "face region, scikit-image SSIM (7x7 window, colour); self-reconstruction only"),
    "ssim_mouth": ("SSIM mouth", "0..1, higher is better", "mouth box; self-reconstruction only"),
    "lmd": ("LMD", "fraction of the inter-ocular distance, lower is better",
            "mean distance of the 40 face-mesh lip points, generated vs reference, divided by the reference's "
            "outer-eye-corner distance (points 33-263); self-reconstruction only"),
    "delta_e": ("Colour shift (delta E)", "CIE76 delta E*ab, lower is better (< 1 invisible, > 3 noticeable)",
                "distance between the mean CIE Lab colours of generated and reference skin: the face-oval hull minus the mouth box"),
    "delta_e_pixel": ("Colour difference per pixel", "mean CIE76 delta E*ab, lower is better",
                      "per-pixel delta E over the same skin region (includes texture and motion differences)"),
    "jitter_gen": ("Mouth jitter (generated)", "fraction of the inter-ocular distance",
                   "mean over frames and the 40 lip points of |p[t+1] - 2 p[t] + p[t-1]| (second difference), / IOD"),
    "jitter_ref": ("Mouth jitter (reference)", "fraction of the inter-ocular distance", "the same on the reference"),
    "jitter_ratio": ("Jitter ratio", "generated / reference, 1 = as steady as the original", "mouth landmarks"),
    "flicker_gen": ("Flicker (generated)", "mean |I[t] - I[t-1]| in 0..255",
                    "mean absolute temporal difference over the skin outside the mouth (all channels)"),
    "flicker_ref": ("Flicker (reference)", "mean |I[t] - I[t-1]| in 0..255", "the same on the reference"),
    "flicker_ratio": ("Flicker ratio", "generated / reference, 1 = as stable as the original", "skin outside the mouth"),
    "sharpness_gen": ("Mouth sharpness (generated)", "variance of the Laplacian", "grey mouth box, 3x3 Laplacian"),
    "sharpness_ref": ("Mouth sharpness (reference)", "variance of the Laplacian", "the same on the reference"),
    "sharpness_ratio": ("Sharpness ratio", "generated / reference, < 1 = blurrier than the original", "mouth box"),
    "opening_r": ("Mouth opening r", "Pearson r, -1..1, higher is better",
                  "inner-lip gap (FaceMesh, / face height) of generated against reference frames, at lag 0; "
                  "self-reconstruction only"),
    "opening_lag": ("Mouth opening lag", "frames within +-10, + = the generated mouth late, 0 is best",
                    "the lag where the cross-correlation of the two openings peaks; self-reconstruction only"),
    "opening_r_peak": ("Mouth opening r at its lag", "Pearson r, -1..1", "the correlation at that lag"),
    "opening_r_recording": ("Mouth opening r at the recording's offset", "Pearson r, -1..1, higher is better",
                            "the same r at the lag of the reference recording's own audio-video offset (its sync "
                            "score against its own sound)"),
    "opening_amplitude": ("Mouth opening amplitude", "generated spread / reference spread, 1 = as wide",
                          "standard deviation of the generated opening over the reference's"),
    "mouth_audio_correlation": ("Mouth-loudness correlation", "Pearson r, -1..1",
                                "inner-lip opening (points 13-14, / IOD) of the generated video against the audio RMS "
                                "level (dB) in one frame period round each frame"),
}

SUMMARY_COLUMNS = ("lse_d", "lse_c", "lse_offset", "expert_similarity", "expert_offset", "psnr_mouth", "ssim_mouth",
                   "lmd", "opening_r", "opening_lag", "opening_r_peak", "opening_r_recording", "delta_e", "jitter_ratio",
                   "flicker_ratio",
                   "sharpness_ratio")
EXTRA_ROW_KEYS = ("mouth_audio_correlation", "jitter_gen", "sharpness_gen")  # in summary.json, not in the table


# --------------------------------------------------------------------------------------------- JSON
def _clean(x: Any) -> Any:
    """NaN/inf -> None and numpy scalars/arrays -> Python, recursively (strict JSON)."""
    if isinstance(x, SyncResult):
        return _clean(x.to_dict())
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def clip_to_dict(res: ClipResult, per_frame: bool = True) -> dict:
    """The JSON form of one clip's result."""
    d = {
        "name": res.name,
        "generated": res.generated,
        "reference": res.reference,
        "audio": res.audio,
        "protocol": res.protocol,
        "fps": res.fps,
        "width": res.width,
        "height": res.height,
        "frames": res.frames,
        "metrics": res.metrics,
        "not_reported": res.notes,
        "shifted_source": res.shifted_source,
        "warnings": list(res.warnings),
        "sync": res.sync,
        "perceptual": res.perceptual,
        "seconds": round(res.seconds, 2),
        "definitions": {k: {"label": v[0], "unit": v[1], "region": v[2]} for k, v in DEFINITIONS.items()},
    }
    if per_frame:
        d["per_frame"] = res.series
    return _clean(d)


def summary_row(res: ClipResult) -> dict:
    """The key numbers of one clip (the batch table's row)."""
    row: dict[str, Any] = {"clip": res.name, "protocol": res.protocol, "frames": res.frames}
    lse = res.sync.get("lse", {}).get("generated")
    exp = res.sync.get("expert", {}).get("generated")
    row["lse_d"] = lse.best if lse else None
    row["lse_c"] = lse.confidence if lse else None
    row["lse_offset"] = lse.offset if lse else None
    row["expert_similarity"] = exp.best if exp else None
    row["expert_offset"] = exp.offset if exp else None
    for k in SUMMARY_COLUMNS + EXTRA_ROW_KEYS:
        if k not in row:
            row[k] = res.metrics.get(k)
    row["warnings"] = list(res.warnings)
    return _clean(row)


def aggregate(rows: list[dict]) -> dict:
    """Mean of each numeric column over the clips that have it (offsets: the share of clips at offset 0; the
    mouth-opening correlation's peak lag: the share of clips within a frame of 0)."""
    out: dict[str, Any] = {"clips": len(rows)}
    for k in SUMMARY_COLUMNS:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and r.get(k) is not None]
        if k.endswith("_offset"):
            out[k + "_zero_share"] = (sum(v == 0 for v in vals) / len(vals)) if vals else None
        elif k == "opening_lag":
            out[k + "_within_1_share"] = (sum(abs(v) <= 1 for v in vals) / len(vals)) if vals else None
        else:
            out[k] = float(np.mean(vals)) if vals else None
    return out


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (pipes escaped)."""
    return str(text).replace("|", "\\|")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


# --------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _arr(series: dict, key: str) -> np.ndarray | None:
    v = series.get(key)
    if v is None:
        return None
    a = np.array([np.nan if x is None else x for x in v], dtype=np.float64)
    return a if np.isfinite(a).any() else None


def plot_per_frame(res: ClipResult, path: Path) -> Path | None:
    """Per-frame curves: PSNR, SSIM, colour shift, flicker, jitter, LMD (the panels that have data)."""
    plt = _plt()
    s = res.series
    t = _arr(s, "time")
    if t is None:
        return None
    panels = []
    if res.protocol != "cross-audio":
        panels += [("PSNR (dB)", [("psnr_face", "face"), ("psnr_mouth", "mouth")]),
                   ("SSIM", [("ssim_face", "face"), ("ssim_mouth", "mouth")]),
                   ("LMD (/ IOD)", [("lmd", "lip landmarks")])]
    panels += [("colour shift (delta E)", [("delta_e", "mean-colour dE"), ("delta_e_pixel", "per-pixel dE")]),
               ("flicker outside mouth", [("flicker_gen", "generated"), ("flicker_ref", "reference")]),
               ("mouth jitter (/ IOD)", [("jitter_gen", "generated"), ("jitter_ref", "reference")]),
               ("mouth sharpness (Laplacian var)", [("sharpness_gen", "generated"), ("sharpness_ref", "reference")])]
    panels = [(title, [(k, lab) for k, lab in lines if _arr(s, k) is not None]) for title, lines in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    cols = 2
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.6 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels):
        for k, lab in lines:
            y = _arr(s, k)
            ax.plot(t[: len(y)], y, label=lab, lw=1.2, ls="--" if "ref" in k else "-")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time (s)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{res.name}: per-frame measures ({res.protocol})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_mouth_audio(res: ClipResult, path: Path) -> Path | None:
    """Mouth opening (generated, reference) and the audio level against time."""
    plt = _plt()
    s = res.series
    t = _arr(s, "time")
    db = _arr(s, "audio_db")
    if t is None or db is None:
        return None
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for k, lab, ls in (("mouth_open_gen", "mouth opening, generated", "-"), ("mouth_open_ref", "mouth opening, reference", "--")):
        y = _arr(s, k)
        if y is not None:
            ax.plot(t[: len(y)], y, ls, lw=1.3, label=lab)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("inner-lip opening / IOD")
    ax2 = ax.twinx()
    ax2.fill_between(t[: len(db)], -100, db, color="tab:gray", alpha=0.25, step="mid", label="audio level")
    ax2.set_ylim(max(-80.0, float(np.nanmin(db)) - 3), max(-10.0, float(np.nanmax(db)) + 3))
    ax2.set_ylabel("audio RMS (dBFS)")
    r = res.metrics.get("mouth_audio_correlation")
    ax.set_title(f"{res.name}: mouth opening against audio loudness (r = {_fmt(r, 2)})", fontsize=10)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_sync(res: ClipResult, path: Path) -> Path | None:
    """Score against audio offset for each computed sync measure (generated solid, reference dashed)."""
    plt = _plt()
    items = [(name, who, r) for name in ("lse", "expert") for who, r in res.sync.get(name, {}).items()
             if isinstance(r, SyncResult)]
    if not items:
        return None
    names = sorted({n for n, _, _ in items}, key=["lse", "expert"].index)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for n_, who, r in items:
            if n_ != name:
                continue
            ax.plot(r.offsets, r.curve, "-o" if who == "generated" else "--s", ms=3, label=f"{who} (offset {r.offset:+d})")
        ax.axvline(0, color="k", lw=0.6)
        ax.set_xlabel("audio offset (frames, + = audio late)")
        judged = name == "expert" and _is_judge(res.sync.get("expert", {}))
        ax.set_ylabel("mean distance (LSE)" if name == "lse" else "mean correlation" if judged else "mean cosine similarity")
        ax.set_title("public SyncNet (LSE)" if name == "lse" else _expert_title(res.sync.get("expert", {})), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_mouth_sheet(res: ClipResult, path: Path) -> Path | None:
    """Contact sheet: mouth crops of evenly spaced frames, generated (top row) and reference (bottom row)."""
    plt = _plt()
    if not res.sheet:
        return None
    has_ref = any(r is not None for _, _, r in res.sheet)
    rows = 2 if has_ref else 1
    cols = len(res.sheet)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.25 * rows + 0.5), squeeze=False)
    for c, (k, g, r) in enumerate(res.sheet):
        for rr, img in enumerate((g, r)[:rows]):
            ax = axes[rr][c]
            ax.axis("off")
            if img is not None:
                ax.imshow(img[:, :, ::-1])
            if rr == 0:
                ax.set_title(f"frame {k}", fontsize=7)
    axes[0][0].text(-0.1, 0.5, "generated", transform=axes[0][0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    if has_ref:
        axes[1][0].text(-0.1, 0.5, "reference", transform=axes[1][0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    fig.suptitle(f"{res.name}: mouth crops", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- Markdown
def _judge_result(entry: dict) -> SyncResult | None:
    """A result of the entry scored by the sync judge (mouth shapes), or None for a SyncNet expert's."""
    return next((r for r in entry.values() if isinstance(r, SyncResult) and r.extra.get("scorer") == "judge"), None)


def _is_judge(entry: dict) -> bool:
    return _judge_result(entry) is not None


def _expert_title(entry: dict) -> str:
    r = _judge_result(entry)
    if r is not None:
        return f"Our sync judge (mouth shapes, {r.extra.get('window', '?')}-frame windows)"
    if entry.get("scorer") == "judge":  # no score to show (too short, silent): the judge still scored, in vain
        return "Our sync judge (mouth shapes)"
    if "status" in entry:  # neither scored: --expert off, or no judge in this build
        return "Our sync judge or SyncNet expert"
    return "Our SyncNet expert"


def _sync_table(res: ClipResult) -> list[str]:
    lines = []
    for name in ("lse", "expert"):
        entry = res.sync.get(name, {})
        title = "Public SyncNet (LSE-C / LSE-D)" if name == "lse" else _expert_title(entry)
        who = [w for w in ("generated", "reference") if isinstance(entry.get(w), SyncResult)]
        if "status" in entry:
            lines += [f"- **{title}**: {entry['status']}", ""]
            if not who:  # (a generated video without a mouth still shows its reference's score below)
                continue
        head = "| | " + " | ".join("generated" if w == "generated" else "reference (its own audio)" for w in who) + " |"
        lines += [f"**{title}**", "", head, "|---|" + "---|" * len(who)]
        if name == "lse":
            rows = [("LSE-D (min distance, lower is better)", lambda r: _fmt(r.best)),
                    ("LSE-C (median - min, higher is better)", lambda r: _fmt(r.confidence)),
                    ("distance at offset 0", lambda r: _fmt(r.at_zero)),
                    ("offset (frames, + = audio late)", lambda r: f"{r.offset:+d}"),
                    ("syncnet_python AV offset", lambda r: f"{-r.offset:+d}"),
                    ("windows", lambda r: str(r.windows))]
        else:
            what = "correlation" if _is_judge(entry) else "similarity"
            rows = [(f"{what} at best offset", lambda r: _fmt(r.best)),
                    (f"{what} at offset 0", lambda r: _fmt(r.at_zero)),
                    ("confidence (max - median)", lambda r: _fmt(r.confidence)),
                    ("offset (frames, + = audio late)", lambda r: f"{r.offset:+d}"),
                    ("windows", lambda r: str(r.windows))]
        for label, f in rows:
            lines.append(f"| {label} | " + " | ".join(f(entry[w]) for w in who) + " |")
        lines.append("")
    return lines


def clip_markdown(res: ClipResult, images: dict[str, Path | None]) -> str:
    """The Markdown report of one clip; ``images`` maps plot names to their files (relative links)."""
    m = res.metrics
    out = [f"# Evaluation of {res.name}", "",
           "| | |", "|---|---|",
           f"| generated | {md_code(res.generated)} |",
           f"| reference | {md_code(res.reference)} |" if res.reference else "| reference | none (generated-only measures) |",
           f"| audio | {md_code(res.audio)} |",
           f"| protocol | {res.protocol} |",
           *(["| made from | the reference's frames shifted by half their number (`--shift-source`): colour shift "
              "measured against them, the measures that need the same moment left out |"] if res.shifted_source else []),
           f"| frames | {res.frames} at {res.fps:g} fps, {res.width}x{res.height} |",
           f"| time | {res.seconds:.1f} s |", ""]
    if res.warnings:  # what the command printed as it measured: the figures below are read in their light
        out += ["## Warnings", "", *(f"- {' '.join(str(w).split())}" for w in res.warnings), ""]
    out += ["## Lip sync", ""]
    out += _sync_table(res)
    if images.get("sync"):
        out += [f"![score against audio offset]({images['sync'].name})", ""]
    out += ["## Image, colour and motion", "", "| metric | value | unit | region and protocol |", "|---|---|---|---|"]
    for k, (label, unit, region) in DEFINITIONS.items():
        if k not in m and k not in res.notes:
            continue
        val = _fmt(m.get(k)) if m.get(k) is not None else f"n/a ({res.notes.get(k, 'not computed')})"
        out.append("| " + " | ".join(_cell(c) for c in (label, val, unit, region)) + " |")
    out += ["", f"Landmarks found on {m.get('frames_with_generated_landmarks', 'n/a')} generated and "
            f"{m.get('frames_with_reference_landmarks', 'n/a')} reference frames of {res.frames}.", ""]
    out += ["## Perceptual metrics", ""]
    for k, v in res.perceptual.items():
        out.append(f"- **{k.upper()}**: {v.get('status') if 'value' not in v else _fmt(v['value'])}")
    out += ["", "## Plots", ""]
    for key, title in (("per_frame", "Per-frame measures"), ("mouth_audio", "Mouth opening against audio loudness"),
                       ("mouth_sheet", "Mouth crops (generated above reference)")):
        if images.get(key):
            out += [f"### {title}", "", f"![{title}]({images[key].name})", ""]
    out += ["## How these are measured", "",
            "All crops come from the reference video's face track (mediapipe detection, smoothed), grown by 25 % per "
            "side and resampled to 384x384; both videos are cut with the same boxes. Landmarks: mediapipe FaceMesh "
            "(478 points, refined) on each crop. Distances are divided by the reference's inter-ocular distance "
            "(outer eye corners). See docs/evaluation.md for the full protocol.", ""]
    return "\n".join(out)


@contextlib.contextmanager
def _all_or_nothing(out: Path):
    """Files written through ``partial(name)`` (a hidden name beside ``out / name``) take their names together once
    the block ends; where writing fails (a full disk), none does and the partial files go: a report is never half new
    and half old, nor a file cut short under its own name. The error names the file it failed on."""
    made: dict[Path, Path] = {}
    current = [out]  # the file being written: the last one asked for

    def partial(name: str) -> Path:
        tmp = out / f".{name}.{os.getpid()}.partial{Path(name).suffix}"
        made[tmp] = current[0] = out / name
        return tmp

    try:
        yield partial
        for tmp, final in made.items():
            if tmp.exists():
                current[0] = final
                os.replace(tmp, final)
    except OSError as e:
        failed = made.get(Path(e.filename), Path(e.filename)) if e.filename else current[0]
        raise OSError(e.errno, e.strerror or str(e), str(failed)) from None
    finally:
        for tmp in made:
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_clip_report(res: ClipResult, out_dir: str | Path, per_frame: bool = True) -> dict[str, Path]:
    """Write report.json, report.md and the PNG plots of one clip into ``out_dir`` (all of them or, where writing
    fails, none: :func:`_all_or_nothing`); returns the written paths."""
    out = Path(out_dir)
    mark_report(out)  # (its videos are no footage)
    plots = {"per_frame": plot_per_frame, "mouth_audio": plot_mouth_audio, "sync": plot_sync,
             "mouth_sheet": plot_mouth_sheet}
    with _all_or_nothing(out) as partial:
        made = {k: plot(res, partial(f"{k}.png")) for k, plot in plots.items()}
        images = {k: (out / f"{k}.png" if v is not None else None) for k, v in made.items()}
        partial("report.json").write_text(json.dumps(clip_to_dict(res, per_frame), indent=1, allow_nan=False))
        partial("report.md").write_text(clip_markdown(res, images))
    for k, v in images.items():
        if v is None:  # not drawn this time: no plot of an earlier run stays beside this report
            with contextlib.suppress(OSError):
                (out / f"{k}.png").unlink()
    written = {k: v for k, v in images.items() if v is not None}
    written.update({"json": out / "report.json", "markdown": out / "report.md"})
    return written


def md_code(text) -> str:
    """``text`` as a code span in a Markdown table cell: a fence longer than any run of backticks in it, and its
    ``|`` escaped (a file name holding them broke the table: ``take|2`final`.mp4``)."""
    text = str(text)
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}"


def _clip_link(clip: str) -> str:
    """A clip's name linking to its report, in a table cell (its ``|``, ``[``, ``]`` escaped; spaces in the link
    written as %20)."""
    from urllib.parse import quote

    shown = re.sub(r"([|\[\]\\])", r"\\\1", clip)
    return f"[{shown}]({quote(clip)}/report.md)"


def batch_markdown(rows: list[dict], agg: dict, title: str) -> str:
    cols = ["clip", "protocol", "frames", *SUMMARY_COLUMNS]
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_clip_link(r["clip"]) if c == "clip" else _fmt(r.get(c))
                                       for c in cols) + " |")
    mean_row = ["**mean**", "", str(sum(r.get("frames") or 0 for r in rows))]
    for c in SUMMARY_COLUMNS:
        if c.endswith("_offset"):
            mean_row.append(f"{_fmt(agg.get(c + '_zero_share'), 2)} at 0")
        elif c == "opening_lag":
            mean_row.append(f"{_fmt(agg.get(c + '_within_1_share'), 2)} within 1")
        else:
            mean_row.append(_fmt(agg.get(c)))
    lines.append("| " + " | ".join(mean_row) + " |")
    lines += ["", "Offsets: frames, + = audio late; the mean row gives the share of clips found at offset 0. "
              "opening_r: the generated mouth's opening against the reference's, frame by frame (Pearson r at lag 0); "
              "opening_lag: the lag of their cross-correlation's peak (frames, + = the generated mouth late; n/a where no "
              "lag correlates; the mean row: the share of the clips with a lag that are within a frame of 0); opening_r_peak: r at that lag (a recording itself out of sync scores low at lag 0 "
              "and higher here); opening_r_recording: r at the offset the sync score finds in the reference recording "
              "itself (its own sound early or late), a lag not chosen to suit the result. n/a = not measured for that "
              "clip (see its report).", ""]
    return "\n".join(lines)


def write_batch_report(results: Iterable[ClipResult], out_dir: str | Path, title: str = "Evaluation summary",
                       per_frame: bool = True, left_out: list[tuple[str, str]] | None = None) -> dict[str, Path]:
    """One folder per clip (:func:`write_clip_report`; ``per_frame``: with the per-frame curves) plus summary.json
    and summary.md with the aggregate table; ``left_out``: (clip, reason) of those that could not be measured, listed
    in both."""
    out = Path(out_dir)
    mark_report(out)
    results = list(results)
    rows = []
    for res in results:
        write_clip_report(res, out / res.name, per_frame=per_frame)
        rows.append(summary_row(res))
    agg = aggregate(rows)
    skipped = [{"clip": c, "reason": why} for c, why in left_out or ()]
    text = batch_markdown(rows, agg, title)
    warned = [(r["clip"], w) for r in rows for w in r["warnings"]]
    if warned:  # a figure of the table may be read wrongly without them
        text += "\nWarnings:\n\n" + "".join(f"- {c}: {' '.join(str(w).split())}\n" for c, w in warned)
    if skipped:
        text += "\nLeft out (not measured):\n\n" + "".join(f"- {s['clip']}: {s['reason']}\n" for s in skipped)
    with _all_or_nothing(out) as partial:
        partial("summary.json").write_text(json.dumps(_clean({"clips": rows, "aggregate": agg,
                                                              **({"left_out": skipped} if skipped else {})}),
                                                      indent=1, allow_nan=False))
        partial("summary.md").write_text(text)
    return {"json": out / "summary.json", "markdown": out / "summary.md"}
