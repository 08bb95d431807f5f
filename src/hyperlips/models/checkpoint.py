"""Load and save network weights: the original ``.pth`` files and our safetensors format (reference §8).

Formats read by :func:`load_checkpoint`:

- ``pth``: an official PyTorch file, a dict with ``"state_dict"`` (plus ``global_step``/``global_epoch``/``optimizer``)
  or a bare state dict; a leading ``module.`` (DataParallel) is stripped. Read with ``torch.load(weights_only=True)``.
- ``safetensors``: one ``.safetensors`` file whose metadata holds a JSON string under ``"hyperlips"``
  (``name``, the :class:`~hyperlips.config.ModelConfig` fields, ``step``, anything else the writer stored).
- ``folder``: a directory with ``model.safetensors`` and ``config.json`` (the same JSON).

The network is taken from the caller's ``name``, else from the metadata, else recognised from the tensor names and
shapes. Every problem a user can cause raises :class:`~hyperlips.errors.CheckpointError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import CheckpointError, UserError, hidden_name, near_name_hint
from .metadata import METADATA_KEY, parse_json as _parse_json
from .registry import CONFIGURABLE, DESCRIPTIONS, EXPERTS, MODEL_NAMES, architecture, canonical_name, create_model, default_config

FORMAT_VERSION = 1
TRAIN_CKPT_FORMAT = "hyperlips-train"  # the "format" of RUN/checkpoints/step_N.pt (train.loop writes them)
FOLDER_WEIGHTS = "model.safetensors"
FOLDER_CONFIG = "config.json"
_MAX_LISTED = 3
_MAX_HEADER = 100_000_000  # safetensors refuses bigger headers too


@dataclass
class CheckpointInfo:
    """What a checkpoint file held, besides the weights."""

    name: str  # registry name of the network
    format: str  # "pth", "safetensors" or "folder"
    step: int | None  # training step, when stored
    config: dict[str, Any] = field(default_factory=dict)  # stored configuration (ModelConfig fields and more)
    path: Path = Path()


# ----------------------------------------------------------------------------------------------------------------
# what each network's state dict looks like


def expected_shapes(name: str, extra: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape for a registry network with the architecture settings ``extra`` (configurable
    networks; default settings when None)."""
    return _expected_shapes(canonical_name(name), json.dumps(architecture(name, extra), sort_keys=True))


@lru_cache(maxsize=None)
def _expected_shapes(name: str, extra_json: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # no memory, no init cost
        model = create_model(name, json.loads(extra_json))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def model_architecture(model: nn.Module) -> dict[str, Any]:
    """The architecture settings a network was built with (its ``config.to_dict()``), {} for fixed networks."""
    cfg = getattr(model, "config", None)
    return dict(cfg.to_dict()) if hasattr(cfg, "to_dict") else {}


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def identify_network(state: Mapping[str, Tensor]) -> str | None:
    """The registry name whose keys and shapes match ``state`` exactly, or None."""
    shapes = _shapes(state)
    for name in MODEL_NAMES:
        if expected_shapes(name) == shapes:
            return name
    return None


def _closest_network(state: Mapping[str, Tensor]) -> tuple[str, float]:
    keys = set(state)
    best, score = MODEL_NAMES[0], -1.0
    for name in MODEL_NAMES:
        exp = set(expected_shapes(name))
        s = len(keys & exp) / len(keys | exp)
        if s > score:
            best, score = name, s
    return best, score


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _mismatch_report(state: Mapping[str, Tensor], name: str, extra: Mapping[str, Any] | None = None) -> str:
    exp = expected_shapes(name, extra)
    got = _shapes(state)
    parts = []
    missing = [k for k in exp if k not in got]
    unexpected = [k for k in got if k not in exp]
    wrong = [f"{k} is {list(got[k])}, expected {list(exp[k])}" for k in exp if k in got and got[k] != exp[k]]
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} shape mismatch(es): {_listing(wrong)}")
    return "; ".join(parts)


def _describe(name: str) -> str:
    return f"'{name}' ({DESCRIPTIONS[name]})"


def _check_fits(state: Mapping[str, Tensor], name: str, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Raise CheckpointError unless ``state`` is exactly the state dict of network ``name`` (with ``extra``)."""
    if _shapes(state) == expected_shapes(name, extra):
        return
    other = identify_network(state)
    if other is not None and other != name:
        raise CheckpointError(f"{path}: this checkpoint holds {_describe(other)} weights, but {_describe(name)} "
                              "is expected here")
    raise CheckpointError(f"{path}: the weights do not fit {_describe(name)}: {_mismatch_report(state, name, extra)}")


def _infer_name(state: Mapping[str, Tensor], path: Path) -> str:
    name = identify_network(state)
    if name is not None:
        return name
    best, score = _closest_network(state)
    if score >= 0.5:
        raise CheckpointError(f"{path}: the weights look like {_describe(best)} but do not fit it: "
                              f"{_mismatch_report(state, best)}")
    first = _listing(list(state))
    raise CheckpointError(f"{path}: not a HyperLips checkpoint: its {len(state)} tensors match none of the known "
                          f"networks ({', '.join(MODEL_NAMES)}); first keys: {first}")


# ----------------------------------------------------------------------------------------------------------------
# reading


def _strip_module(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in state.items():
        k = str(k)
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def _sniff(path: Path) -> str:
    """Guess the container from the first bytes: zip, pickle, safetensors, text or unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < _MAX_HEADER:
        return "safetensors"
    if head.lstrip()[:1] in (b"{", b"[") or (head and all(32 <= c < 127 or c in (9, 10, 13) for c in head)):
        return "text"
    return "unknown"


def zip_damage(path: str | os.PathLike) -> str | None:
    """The first stored record of a PyTorch zip file whose CRC-32 does not match its bytes, if any (torch.load does
    not check them: a flipped bit inside a tensor loads as a wrong number); None for an intact or non-zip file."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None  # not a readable zip: torch.load reports what is wrong with it
    return None if bad is None else bad.split("/", 1)[-1]


def _read_pth(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise CheckpointError(f"{path}: holds pickled Python objects (not just tensors), which cannot be loaded "
                                  "safely; re-save it as a plain state dict") from None
        raise CheckpointError(f"{path}: the PyTorch file is corrupt or truncated ({_short(e)})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path}: the PyTorch file is corrupt or truncated ({_short(e)})") from None
    bad = zip_damage(path)
    if bad is not None:
        raise CheckpointError(f"{path}: the PyTorch file is damaged (its record {bad!r} does not match its checksum)")
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == TRAIN_CKPT_FORMAT and isinstance(obj.get("models"), Mapping):
        # a training checkpoint (RUN/checkpoints/step_N.pt): its trained network, not the discriminator
        models = obj["models"]
        key = next((k for k in ("syncnet", "generator") if k in models), None)
        if key is None:
            raise CheckpointError(f"{path}: a training checkpoint without a sync expert or generator (it holds "
                                  f"{', '.join(map(str, models)) or 'nothing'})")
        if isinstance(obj.get("step"), int):
            meta["global_step"] = obj["step"]
        meta["training_stage"] = str(obj.get("stage", ""))
        obj = models[key]
    elif isinstance(obj, Mapping) and "state_dict" in obj:
        for key in ("global_step", "global_epoch"):
            if isinstance(obj.get(key), int):
                meta[key] = obj[key]
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        what = type(obj).__name__ if not isinstance(obj, Mapping) else "a dict that is not a state dict"
        raise CheckpointError(f"{path}: not a checkpoint: it holds {what}, expected a dict with 'state_dict' "
                              "or a state dict of tensors")
    return _strip_module(obj), meta


def _utf8(path) -> bool:
    """Whether ``path`` is UTF-8 text, as the safetensors library needs it (a Latin-1 name from an old archive, or any
    accented name under another locale, is not)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes."""
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _save_safetensors(state: dict[str, Tensor], tmp, metadata: dict[str, str]) -> None:
    from safetensors.torch import save, save_file

    if _utf8(tmp):
        save_file(state, tmp, metadata=metadata)
    else:  # (see _utf8): the bytes made by the library, written here
        Path(tmp).write_bytes(save(state, metadata=metadata))


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    if header_len > size - 8:
        raise CheckpointError(f"{path}: the safetensors file is truncated (header says {header_len} bytes, "
                              f"the file has {size})")
    try:
        if _utf8(path):
            with safe_open(str(path), framework="pt", device="cpu") as f:
                raw_meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        else:  # the library takes only paths that are UTF-8 ("corrupt or truncated" it was): the bytes, read here
            from safetensors.torch import load

            data = path.read_bytes()
            state, raw_meta = load(data), _header_metadata(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the safetensors file is corrupt or truncated ({_short(e)})") from None
    meta: dict[str, Any] = {}
    if METADATA_KEY in raw_meta:
        meta = _parse_json(raw_meta[METADATA_KEY], path, "its 'hyperlips' metadata")
    if not state:
        raise CheckpointError(f"{path}: not a checkpoint: the safetensors file holds no tensors")
    return _strip_module(state), meta


def _short(e: BaseException) -> str:
    """The first sentence of an exception's message, on one line."""
    msg = " ".join(str(e).split())
    if not msg:
        return type(e).__name__
    msg = msg.split(". ")[0]
    return msg if len(msg) <= 120 else msg[:117] + "..."


def _read_any(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    """-> (state dict without 'module.' prefixes, stored metadata, format)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}{near_name_hint(str(path))}")
    if path.is_dir():
        weights, cfg = path / FOLDER_WEIGHTS, path / FOLDER_CONFIG
        if not weights.is_file():
            raise CheckpointError(f"{path}: a checkpoint folder must contain {FOLDER_WEIGHTS} (and {FOLDER_CONFIG})")
        state, meta = _read_file(weights, expect_safetensors=True)[:2]
        if cfg.is_file():
            try:
                text = cfg.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{cfg}: cannot read it ({_short(e)})") from None
            meta = {**meta, **_parse_json(text, cfg, "the checkpoint config")}
        return state, meta, "folder"
    return _read_file(path)


def read_tensors(path: str | os.PathLike, expected: str) -> dict[str, Tensor]:
    """The tensors of a weights file of any network (a PyTorch file, a training checkpoint's network or a
    safetensors file), without checking which network they fit; :class:`CheckpointError` saying what the file is
    when it holds none (empty, text, damaged, another kind of file), and that ``expected`` was."""
    return _read_file(Path(path), expected=expected)[0]


def _read_file(path: Path, expect_safetensors: bool = False,
               expected: str = "a .pth file, a .safetensors file or a checkpoint folder",
               ) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: checkpoint is not readable (check its permissions)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes)")
    kind = _sniff(path)
    if kind in ("zip", "pickle") and not expect_safetensors:
        state, meta = _read_pth(path)
        return state, meta, "pth"
    if kind == "safetensors":
        state, meta = _read_safetensors(path)
        return state, meta, "safetensors"
    if expect_safetensors or path.suffix.lower() == ".safetensors":
        raise CheckpointError(f"{path}: the safetensors file is corrupt (bad header)")
    if path.suffix in (".pth", ".pt", ".tar", ".ckpt", ".bin"):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (the file is corrupt or of another type)")
    what = "a text/JSON file" if kind == "text" else "an unknown binary file"
    raise CheckpointError(f"{path}: not a checkpoint ({what}); expected {expected}")


def read_state_dict(path: str | os.PathLike, name: str | None = None) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Read and check a checkpoint without building the network: (state dict, info).

    ``name`` (a registry name) is the network the caller expects; None takes it from the file or its keys.
    """
    path = Path(path)
    if name is not None:
        try:
            name = canonical_name(name)
        except UserError as e:
            raise CheckpointError(f"{path}: {e}") from None
    state, meta, fmt = _read_any(path)
    stored = meta.get("name")
    stored = stored if isinstance(stored, str) and stored in MODEL_NAMES else None
    extra = meta.get("extra") if isinstance(meta.get("extra"), Mapping) else None
    if name is None:
        if stored is not None:
            if _shapes(state) != expected_shapes(stored, extra):
                actual = identify_network(state)
                detail = _describe(actual) if actual else _mismatch_report(state, stored, extra)
                raise CheckpointError(f"{path}: its metadata says '{stored}' but the weights do not fit it: {detail}")
            name = stored
        else:
            name = _infer_name(state, path)
    else:
        if stored is not None and stored != name and stored in CONFIGURABLE:
            raise CheckpointError(f"{path}: this checkpoint holds {_describe(stored)} weights, but {_describe(name)} "
                                  "is expected here")
        _check_fits(state, name, path, extra if stored == name else None)
    kept = dict(extra or {}) if stored in (name, None) else {}
    if name in CONFIGURABLE:  # the architecture in full, beside anything else the writer stored
        kept = {**kept, **architecture(name, extra if stored == name else None)}
    if fmt == "pth":
        config = {**default_config(name).to_dict(), **meta, "extra": kept}
        step = meta.get("global_step")
    else:
        config = {**default_config(name).to_dict(), **meta, "name": name, "extra": kept}
        step = meta.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) else None
    _check_finite(state, path)
    return state, CheckpointInfo(name=name, format=fmt, step=step, config=config, path=path)


def _check_finite(state: Mapping[str, Tensor], path) -> None:
    """CheckpointError for weights that are not numbers (NaN or infinite): a damaged file or a training that
    diverged; such a network renders a blank mouth without a word."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"{path}: its weights hold values that are not numbers (NaN or infinite), in {bad[0]}"
                              f"{more}: the file is damaged, or the training that wrote it diverged")


def load_checkpoint(path: str | os.PathLike, name: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """Build the network a checkpoint holds, load its weights strictly, and return (model in eval mode, info)."""
    state, info = read_state_dict(path, name)
    model = create_model(info.name, info.config.get("extra"))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def load_expert_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                           kinds: tuple[str, ...] = EXPERTS) -> tuple[nn.Module, CheckpointInfo]:
    """A lip-sync expert (the official SyncNet or the compact one; ``kinds``: the networks accepted, e.g. ``JUDGES``
    for a judge that need not be a loss) in eval mode; CheckpointError for any other network."""
    state, info = read_expert_state(path, kinds)
    model = create_model(info.name, info.config.get("extra"))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def read_expert_state(path: str | os.PathLike,
                      kinds: tuple[str, ...] = EXPERTS) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """:func:`read_state_dict` for a lip-sync expert of either kind (registry ``EXPERTS``; or of ``kinds``)."""
    state, info = read_state_dict(path)
    if info.name not in kinds:
        what = "a lip-sync expert" if tuple(kinds) == EXPERTS else "a lip-sync expert or judge"
        raise CheckpointError(f"{path}: holds {_describe(info.name)} weights, not {what} ({' or '.join(kinds)})")
    return state, info


# ----------------------------------------------------------------------------------------------------------------
# writing


def _atomic_write(target: Path, write) -> None:
    """Write through a temporary file in the target's folder, then rename it over the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(target.parent / hidden_name(target.name, f".{os.getpid()}.{secrets.token_hex(4)}.tmp"))
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = os.stat(tmp).st_mode & 0o777  # 0o666 less the umask; some writers recreate the file as 0o600
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        code = re.search(r"\(os error (\d+)\)", str(e)) if not isinstance(e, OSError) else None
        if code:  # safetensors' writer reports a full disk as its own error, "... (os error 28)": an OSError here,
            number = int(code.group(1))  # naming the file, as a failed write is
            raise OSError(number, os.strerror(number), os.fspath(target)) from None
        raise


def save_checkpoint(model_or_state: nn.Module | Mapping[str, Tensor], path: str | os.PathLike, name: str,
                    config: ModelConfig | Mapping[str, Any] | None = None, step: int | None = None,
                    official: bool = False) -> Path:
    """Write weights atomically; returns the path written.

    Default: our format, a safetensors file with the JSON config in its metadata; when ``path`` is an existing
    folder or has no suffix, a folder with ``model.safetensors`` + ``config.json``. ``official=True`` writes the
    original ``.pth`` dict (``state_dict``, ``optimizer`` None, ``global_step``, ``global_epoch``).
    """
    name = canonical_name(name)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().to("cpu").contiguous() for k, v in _strip_module(state).items()}
    if isinstance(config, ModelConfig):
        cfg: dict[str, Any] = config.to_dict()
    else:
        cfg = {**default_config(name).to_dict(), **dict(config or {})}
    if isinstance(model_or_state, nn.Module) and model_architecture(model_or_state):
        cfg["extra"] = {**dict(cfg.get("extra") or {}), **model_architecture(model_or_state)}
    extra = cfg.get("extra") if name in CONFIGURABLE else None
    if _shapes(state) != expected_shapes(name, extra):
        raise ValueError(f"save_checkpoint: the weights do not fit '{name}': {_mismatch_report(state, name, extra)}")
    if official and name in CONFIGURABLE and architecture(name, extra) != architecture(name):
        raise ValueError(f"save_checkpoint: a '{name}' with non-default settings needs our safetensors format "
                         "(the .pth format cannot carry them)")
    path = Path(path)

    if official:
        epoch = cfg.get("global_epoch", cfg.get("epoch", 0))
        obj = {"state_dict": state, "optimizer": None, "global_step": int(step or 0),
               "global_epoch": int(epoch) if isinstance(epoch, int) else 0}
        _atomic_write(path, lambda tmp: torch.save(obj, tmp))
        return path

    from .. import __version__

    cfg.update(name=name, step=step, format_version=FORMAT_VERSION, hyperlips_version=__version__)
    text = json.dumps(cfg, default=str, sort_keys=True)
    metadata = {METADATA_KEY: text}
    if path.is_dir() or path.suffix == "":
        _atomic_write(path / FOLDER_WEIGHTS, lambda tmp: _save_safetensors(state, tmp, metadata))
        _atomic_write(path / FOLDER_CONFIG,
                      lambda tmp: Path(tmp).write_text(json.dumps(cfg, default=str, indent=2, sort_keys=True) + "\n",
                                                       encoding="utf-8"))
        return path
    _atomic_write(path, lambda tmp: _save_safetensors(state, tmp, metadata))
    return path
