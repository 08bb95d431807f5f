"""What the training loop (:mod:`.loop`) does at a validation and before a checkpoint: the BatchNorm statistics
re-estimated for the current weights, and the stage's held-out figures gathered from every process."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .config import TrainConfig
from .stage import Context, Stage


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Tensor]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def recalibrate_bn(stage: Stage, cfg: TrainConfig, ctx: Context, step: int) -> None:
    """Re-estimate the BatchNorm running statistics of the stage's network with its current weights.

    Running statistics are moving averages over past steps; when the weights change quickly (early training,
    high learning rates) they lag behind, and the network in eval mode (validation, ``best``, inference, the
    frozen expert of ``train base``) behaves worse than in training: a sync expert whose batch-statistics AUC on
    held-out windows was 0.75 scored 0.52 in eval mode. Here they are recomputed as the plain average over
    ``bn_batches`` batches of training samples. The samples depend only on (seed, step) and are the same on
    every process, so runs stay exactly resumable and DDP processes agree."""
    n = int(cfg.bn_batches)
    if n <= 0:
        return
    module = stage.bn_module()
    if module is None:
        return
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    from torch.utils.data import default_collate

    ds = stage.train_dataset()
    bs = cfg.batch_size
    first = (1 << 40) + step * n * bs  # far from the training stream's sample numbers

    momenta = [m.momentum for m in bns]
    was_training = module.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        module.train()
        with torch.no_grad(), ctx.autocast():
            for k in range(n):
                batch = default_collate([ds[first + k * bs + i] for i in range(bs)])
                stage.bn_forward(to_device(batch, ctx.dist.device))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        module.train(was_training)


def held_out_metrics(stage: Stage, cfg: TrainConfig, ctx: Context,
                     on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """The stage's held-out figures over ``val_samples`` validation samples (split across processes);
    ``on_batch(done, total)`` after each batch (Base's 256 samples take minutes on a CPU)."""
    from torch.utils.data import DataLoader

    ds = stage.val_dataset()
    if ds is None:
        return {}
    n = min(cfg.val_samples, len(ds))
    mine = list(range(ctx.dist.rank, n, ctx.dist.world))
    loader = DataLoader(torch.utils.data.Subset(ds, mine), batch_size=cfg.batch_size, shuffle=False,
                        num_workers=0, generator=torch.Generator())
    values: dict[str, list[np.ndarray]] = {}
    mods = stage.modules()
    modes = {k: m.training for k, m in mods.items()}
    for m in mods.values():
        m.eval()
    try:
        with torch.no_grad(), ctx.autocast():
            for i, batch in enumerate(loader):
                out = stage.val_batch(to_device(batch, ctx.dist.device))
                for k, v in out.items():
                    values.setdefault(k, []).append(v.detach().float().cpu().numpy().reshape(-1))
                if on_batch is not None:
                    on_batch(i + 1, len(loader))
    finally:
        for k, m in mods.items():
            m.train(modes[k])
    local = {k: np.concatenate(v) for k, v in values.items()}
    parts = ctx.dist.gather(local)
    merged = {k: np.concatenate([p[k] for p in parts if k in p]) for k in local}
    return stage.val_metrics(merged)
