"""A run's logs: scalars (``scalars.jsonl`` and TensorBoard when installed) and image grids (PNG files)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np
from torch import Tensor


def _drop_after(path: Path, step: int) -> None:
    """Keep the records of ``path`` (JSON lines) up to ``step``; a line that is not a record (a write cut short) goes
    too."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            keep = int(rec.get("step", 0)) <= step
        except (ValueError, TypeError, AttributeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)


class RunLog:
    """Scalars to ``scalars.jsonl`` (always) and TensorBoard (when installed); image grids as PNG files
    under ``images/`` (always) and in TensorBoard. Only rank 0 writes."""

    _said_no_tb = False

    def __init__(self, run: Path, enabled: bool, quiet: bool = False, start: int = 0):
        """``start``: the step the run goes on from (a resume): records after it, from the stretch the resume throws
        away, are dropped so that the file holds each step once, as this run trained it."""
        self.run = run
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        run.mkdir(parents=True, exist_ok=True)
        _drop_after(run / "scalars.jsonl", start)
        self._scalars = open(run / "scalars.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run / "tb"))
        except ImportError:
            if not RunLog._said_no_tb and not quiet:
                RunLog._said_no_tb = True
                print("hyperlips train: tensorboard is not installed, so scalars go to scalars.jsonl and image grids "
                      "to images/*.png in the run folder (pip install tensorboard for TensorBoard)", file=sys.stderr)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"step": int(step), "time": round(time.time(), 3), **{k: float(v) for k, v in values.items()}}
        self._scalars.write(json.dumps(rec) + "\n")
        self._scalars.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), step)

    def image(self, step: int, tag: str, grid_bgr: np.ndarray) -> None:
        if not self.enabled:
            return
        from ..media.video import write_image

        d = self.run / "images"
        d.mkdir(parents=True, exist_ok=True)
        write_image(d / f"step_{step:09d}_{tag.replace('/', '_')}.png", grid_bgr)
        if self.tb is not None:
            self.tb.add_image(tag, np.ascontiguousarray(grid_bgr[:, :, ::-1]), step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._scalars.close()
            if self.tb is not None:
                self.tb.close()


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Rows of (H, W, 3) uint8 BGR images (all the same size) -> one grid image."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            if img.ndim == 2:
                img = np.repeat(img[:, :, None], 3, axis=2)
            if img.shape[:2] != (h, w):
                import cv2

                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = img
    return grid


def to_images(t: Tensor) -> list[np.ndarray]:
    """(N, C, H, W) float in [0, 1] -> N (H, W, C) uint8 images, rounded."""
    a = t.detach().float().clamp(0, 1).mul(255).round().to("cpu").numpy().astype(np.uint8)
    return [np.ascontiguousarray(x.transpose(1, 2, 0)) for x in a]


