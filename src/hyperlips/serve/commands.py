"""``hyperlips serve``: the web page and the HTTP API (see docs/serving.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..options import at_least


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a web page and an HTTP API for lip-sync and person-model training",
                       description="Serve the hyperlips page and API. Listens on localhost only unless --host says "
                                   "otherwise; jobs wait in a queue that survives a restart. There are no accounts: "
                                   "every client that can connect sees and controls every job and upload.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                   "0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--data", type=Path, help="folder for the queue, uploads and results "
                   "(default $XDG_DATA_HOME/hyperlips/serve, or ~/.local/share/hyperlips/serve)")
    p.add_argument("--models", type=Path, help="folder of person models (default DATA/models); trained ones land here")
    p.add_argument("--jobs", type=int, default=1, help="jobs that run at the same time (default 1)")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="largest uploaded file in MB (500)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="longest video or speech in seconds (300)")
    p.add_argument("--max-train-minutes", type=float, default=120.0, help="largest training budget in minutes (120)")
    p.add_argument("--keep-hours", type=float, default=24.0, help="finished jobs and uploads are deleted after this (24)")
    p.add_argument("--device", default="auto", help="device of the lip-sync jobs: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=16, help="frames per network batch in lip-sync jobs (16)")
    p.add_argument("--threads", type=at_least(0), default=0, help="CPU threads per job (0: torch's default)")
    p.add_argument("--no-examples", action="store_true", help="do not offer the built-in example inputs")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from .server import serve
    from .settings import ServeSettings, default_data_dir

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535 (got {args.port})")
    import importlib.util

    if importlib.util.find_spec("torch") is None:  # every job needs it (in its worker): said now, as every command
        raise ModuleNotFoundError("No module named 'torch'", name="torch")  # says it, not as each job's crash
    for name in ("jobs", "max_upload_mb", "max_seconds", "max_train_minutes", "keep_hours", "batch_size"):
        if not getattr(args, name) > 0:  # (nan too: it was taken, and every job refused)
            raise UserError(f"--{name.replace('_', '-')} must be a number more than 0 (got {getattr(args, name)})")
    from .jobs import MIN_TRAIN_MINUTES

    if args.max_train_minutes < MIN_TRAIN_MINUTES:  # (every training job would be refused)
        raise UserError(f"--max-train-minutes must be at least {MIN_TRAIN_MINUTES:g}, the least budget a training job "
                        f"may ask for (got {args.max_train_minutes:g})")
    from ..runtime import resolve_device

    resolve_device(args.device)  # a device this machine lacks is said now (every job failed with it, in the
    # operator's words, which the page's user could not change)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.verbose:  # the server's own debug lines (every request), not every library's (PIL's PNG chunks)
        logging.getLogger("hyperlips").setLevel(logging.DEBUG)
    settings = ServeSettings(data=args.data or default_data_dir(), models=args.models, host=args.host, port=args.port,
                             jobs_at_once=args.jobs, max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
                             max_train_minutes=args.max_train_minutes, keep_hours=args.keep_hours, device=args.device,
                             batch_size=args.batch_size, threads=args.threads, examples=not args.no_examples)
    return serve(settings)
