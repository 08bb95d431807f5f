"""What one server may do: where it keeps its data, its limits, and how it runs jobs."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/hyperlips/serve`` (``~/.local/share/hyperlips/serve`` when it is unset, or relative: the XDG
    rule, since a relative one put the queue and the models wherever the server was started from, and a restart
    elsewhere lost them). A :class:`UserError` asking for ``--data`` where no home folder can be found (a container
    run as a user id with no account and no HOME: a traceback)."""
    from ..errors import UserError, warn

    base = os.environ.get("XDG_DATA_HOME", "")
    if base and not os.path.isabs(base):  # (said: a server that kept its data there finds its queue empty)
        warn(f"XDG_DATA_HOME={base} is not an absolute path, so it is ignored (as the XDG rule says); the data folder "
             "is under ~/.local/share (--data DIR for another)")
    if not os.path.isabs(base):
        try:
            base = str(Path.home() / ".local" / "share")
        except RuntimeError:  # (Path.home: no HOME, and no account for this user id)
            raise UserError("no home folder to keep the server's data in (HOME is not set, and this user id has no "
                            "account): give a folder with --data DIR") from None
    return Path(base) / "hyperlips" / "serve"


def default_finetune_command() -> list[str]:
    """The program a training job runs; the job adds ``VIDEO -o MODEL --work WORK --minutes N [--checkpoint BASE]``."""
    return [sys.executable, "-m", "hyperlips.cli", "finetune"]


@dataclass
class ServeSettings:
    data: Path = field(default_factory=default_data_dir)  # jobs.sqlite3, files/, jobs/, examples/
    models: Path | None = None  # person models (default: <data>/models)
    host: str = "127.0.0.1"
    port: int = 7860
    jobs_at_once: int = 1  # worker processes running at the same time
    max_upload_mb: float = 500.0  # one uploaded file
    max_seconds: float = 300.0  # a video or speech file longer than this is refused
    max_train_minutes: float = 120.0  # the longest time budget a training job may ask for
    keep_hours: float = 24.0  # finished jobs and unused uploads are deleted this long after they end
    device: str = "auto"  # device of the sync jobs
    batch_size: int = 16
    threads: int = 0  # torch threads per worker (0: torch's default)
    finetune_command: list[str] = field(default_factory=default_finetune_command)
    poll_seconds: float = 0.25  # how often the scheduler looks at running jobs
    examples: bool = True  # offer the built-in example (a photo and synthesised speech)

    def __post_init__(self) -> None:
        # absolute: a job's worker runs in the job's folder, where a relative path would name another place
        self.data = Path(self.data).expanduser().absolute()
        self.models = Path(self.models).expanduser().absolute() if self.models is not None else self.data / "models"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
