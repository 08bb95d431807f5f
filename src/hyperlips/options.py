"""The command-line options that several commands share (`sync`, `live`, `demo`, `eval`): the model
and how it runs, the face, the reference and the output file. The commands build their parsers from these, so an
option means the same wherever it appears."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals) or vals[2] <= vals[0] or vals[3] <= vals[1]:
        raise argparse.ArgumentTypeError(f"a box is x1,y1,x2,y2 in pixels, finite, with x2>x1 and y2>y1 (got {text!r}; "
                                         "one starting with a minus is given as --face-box=-10,...)")
    return vals  # type: ignore[return-value]


def at_least(low: int):
    """An argparse type: a whole number of at least ``low`` (``--threads -2`` refused on the command line, not deep
    inside torch)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < low:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {low} (got {text!r})")
        return v

    return parse


def add_model_options(p: argparse.ArgumentParser, input_blend: bool = True, phones: bool = True,
                      mouth: bool = True) -> None:
    from .face.steady import DEFAULT_WEIGHT as DEFAULT_BLEND

    p.add_argument("--checkpoint", type=Path, help="generator weights: HyperLips-Base (an official .pth or a hyperlips "
                   ".safetensors) or HyperLips-Lite (from `hyperlips finetune`); default: the starter model shipped in "
                   "the package (a generic HyperLips-Lite)")
    p.add_argument("--hr-checkpoint", type=Path, help="HR decoder weights (128, 256 or 512 px) for a sharper mouth")
    p.add_argument("--size", type=int, choices=(128, 256, 512), help="render size of the mouth; 256/512 need an HR checkpoint")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=16, help="frames per network batch (default 16)")
    p.add_argument("--threads", type=at_least(0), default=0,
                   help="CPU threads for the networks (default 0: torch's choice, one per core); two runs at once on "
                        "one machine: give each its share (--threads 1 on two cores)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="number format of the networks: auto (default) is bf16 on a CPU with bf16 instructions "
                        "(AVX512-BF16, AMX, Arm BF16; 1.3-1.7x faster, within a grey level of fp32) or a CUDA GPU, "
                        "else fp32; fp16 needs a CUDA GPU")
    p.add_argument("--temporal-blend", type=float, default=DEFAULT_BLEND, metavar="W",
                   help=f"blend each generated face with those of the frames before and after it, each with weight W "
                        f"(default {DEFAULT_BLEND:g}: 1/4, 1/2, 1/4), for steadier lips; 0 turns it off, at most 1/3")
    if input_blend:
        p.add_argument("--input-blend", type=float, default=None, metavar="W",
                       help="blend the upper face the network reads with that of the frames before and after it, "
                            "each with weight W, for steadier lips that stay sharp (default: 0.25 for "
                            "HyperLips-Lite, the starter's network; 0 for HyperLips-Base); 0 turns it off, at most 1/3")
    if mouth:
        from .mouth import MOUTH_OPTIONS

        p.add_argument("--mouth", choices=MOUTH_OPTIONS, default="auto",
                       help="render: the network draws the lower face; warp (HyperLips-Lite): the frame's own lips "
                            "and jaw are moved to the mouth the network reads from the speech, at full resolution, "
                            "the inside of a new opening drawn dark; hybrid (HyperLips-Lite): the network's face with "
                            "the fine detail of that warped frame; auto (default): warp with the shipped starter, "
                            "hybrid with a model of the person, render with HyperLips-Base")
    if phones:
        p.add_argument("--no-phones", action="store_true",
                       help="a HyperLips-Lite that reads phones reads the sound alone: the phones of the "
                            "speech are not read (by pocketsphinx, 3-6%% of real time), and the mouth follows new "
                            "voices less closely")
    p.add_argument("--untrained", action="store_true", help="use randomly initialised weights instead (for tests: the mouth is meaningless)")
    p.add_argument("--model", choices=("base", "lite"), help="with --untrained: which generator (default base); trained "
                   "weights say which network they are")


def add_face_choice(p: argparse.ArgumentParser, what: str = "follow") -> None:
    """``--face N`` or ``--face-box X1,Y1,X2,Y2``: which face a command follows (``sync``) or learns (``preprocess``,
    ``finetune``) where a video shows several."""
    face = p.add_mutually_exclusive_group()
    face.add_argument("--face", type=at_least(0), metavar="N",
                      help=f"which face to {what} when several are visible: 0 = leftmost (default: the largest)")
    face.add_argument("--face-box", type=_box, metavar="X1,Y1,X2,Y2",
                      help=f"{what} the face overlapping this box (pixels, first frame with faces; a box starting left "
                           "of or above the frame: --face-box=-20,-20,300,300)")


def add_sync_options(p: argparse.ArgumentParser, timings: bool = True) -> None:
    add_face_choice(p)
    p.add_argument("--detect-every-frame", action="store_true",
                   help="run the face detector on every frame (default: a frame between two frames whose face "
                        "barely moved takes the mean of their boxes, which spares most of every other frame's "
                        "detection and steadies the box; a cut, a face coming or going and fast motion are still "
                        "detected on each frame)")
    p.add_argument("--loop", choices=("pingpong", "hold"), default="pingpong",
                   help="audio longer than the video: play it forward and backward (default) or hold the last frame")
    p.add_argument("--reference", default="best",
                   help="reference face: best (most confident detection, default), first, a frame number, or an image "
                        "file of the same person's face")
    p.add_argument("--fps", type=float, help="output frame rate (default: the video's own; its average rate when the "
                                             "frame rate varies). Each output frame shows the source frame of its time")
    add_output_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if timings:
        p.add_argument("--timings", action="store_true", help="print the time and frames per second end to end and "
                                                              "the busy time of each stage at the end")


def _crf(text: str) -> int:
    from .media.writer import MAX_CRF

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_CRF:
        raise argparse.ArgumentTypeError(f"a whole number from 0 (lossless) to {MAX_CRF} (smallest) is needed, "
                                         f"got {text!r}")
    return value


def add_output_options(p: argparse.ArgumentParser) -> None:
    from .media.writer import DEFAULT_CRF, DEFAULT_PRESET, PIX_FMTS, PRESETS

    p.add_argument("--crf", type=_crf, default=DEFAULT_CRF, metavar="0-51",
                   help=f"H.264 quality: lower is better and larger, +6 roughly halves the size "
                        f"(default {DEFAULT_CRF}, visually lossless; 0 is lossless but only some players play it)")
    p.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET, metavar="PRESET",
                   help=f"libx264 speed: {', '.join(PRESETS)} (default {DEFAULT_PRESET}); the fastest presets compress "
                        "worst (ultrafast files are about 4x larger)")
    p.add_argument("--pix-fmt", choices=PIX_FMTS, default=PIX_FMTS[0],
                   help="yuv420p (default): plays in every browser and phone; an odd width or height gains one "
                        "repeated edge column or row. yuv444p: the exact size and full colour resolution, but "
                        "Safari, phones and TVs cannot play it")


def apply_threads(args: argparse.Namespace) -> None:
    """``--threads N`` (N > 0): torch's CPU threads for this process."""
    n = int(getattr(args, "threads", 0) or 0)
    if n > 0:
        import torch

        torch.set_num_threads(n)
