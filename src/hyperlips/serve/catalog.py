"""What a job can use: the models (the shipped starter, person models, untrained weights) and the example inputs.

Person models are the files ``hyperlips finetune`` writes, in the server's models folder:
``NAME.safetensors`` (or ``.pth``) and, when an HR decoder was trained too, ``NAME.hr<size>.safetensors``.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .settings import ServeSettings

log = logging.getLogger("hyperlips.serve")

MODEL_SUFFIXES = (".safetensors", ".pth")
_HR = re.compile(r"^(?P<stem>.+)\.hr(?P<size>128|256|512)$")
_NAME = re.compile(r"^[^\W_](?:[\w .-]{0,62}[\w.-])?\Z")  # letters of any script, digits, spaces inside, '.', '_', '-'
# (Élodie Dupont.safetensors, a name finetune took, was left out, said only in the server's log)
_SKIPPED: set[Path] = set()  # model files whose names cannot be listed, already said
UNTRAINED_ID = "untrained"
STARTER_ID = "starter"


@dataclass
class ModelChoice:
    id: str
    label: str
    kind: str  # starter | person | untrained
    checkpoint: Path | None = None  # generator weights (None: random weights)
    hr: dict[int, Path] = field(default_factory=dict)  # HR decoders by render size

    @property
    def sizes(self) -> list[int]:
        if self.kind == UNTRAINED_ID:
            return [128, 256, 512]
        return sorted({128, *self.hr})

    def public(self) -> dict:
        return {"id": self.id, "label": self.label, "kind": self.kind, "sizes": self.sizes}


def shipped_starter() -> tuple[Path, dict[int, Path]] | None:
    """The starter model shipped inside the package (``models.shipped``): (weights, HR decoders by size), or None."""
    from ..models import shipped

    found = shipped.starter()
    return None if found is None else (found.path, {})


def _keep_first(found: dict, key, path: Path, what: str) -> None:
    """``found[key] = path`` unless a file came first (in ``person_models``' order), the one left out said in the log
    once."""
    kept = found.setdefault(key, path)
    if kept != path and path not in _SKIPPED:
        _SKIPPED.add(path)
        log.warning("%s %s is left out: %s has the same name", what, path.name, kept.name)


def person_models(folder: Path) -> list[ModelChoice]:
    """Every model ``hyperlips finetune`` left in ``folder``, with its HR decoders."""
    if not folder.is_dir():
        return []
    bases: dict[str, Path] = {}
    hrs: dict[str, dict[int, Path]] = {}
    def order(p: Path):  # a .safetensors before a .pth of the name, the suffix in lower case before another case
        return p.stem, p.suffix.lower() != ".safetensors", p.suffix != p.suffix.lower(), p.name

    for p in sorted(folder.iterdir(), key=order):
        if p.suffix.lower() not in MODEL_SUFFIXES or not p.is_file() or p.name.startswith("."):
            continue
        stem = unicodedata.normalize("NFC", p.stem)  # a Mac's decomposed é: the name as typed, one model of it
        m = _HR.match(stem)
        if m:  # an HR decoder: the first in that order wins too (the last did: Anna.hr256.pth over .safetensors)
            _keep_first(hrs.setdefault(m["stem"], {}), int(m["size"]), p, "HR decoder")
        elif _NAME.match(stem):
            _keep_first(bases, stem, p, "model")
        elif p not in _SKIPPED:  # said once per file in the server's log, not at every listing
            _SKIPPED.add(p)
            log.warning("model %s is left out: a model's name is letters, digits, spaces, '.', '_' and '-' (at most "
                        "64, starting with a letter or digit); rename the file to list it", p.name)
    return [ModelChoice(f"person:{stem}", f"{stem} (person model)", "person", path, hrs.get(stem, {}))
            for stem, path in sorted(bases.items())]


def list_models(settings: ServeSettings) -> list[ModelChoice]:
    """The choices in the order the page shows them; the first is the default."""
    out: list[ModelChoice] = []
    starter = shipped_starter()
    if starter is not None:
        out.append(ModelChoice(STARTER_ID, "starter model (shipped)", "starter", starter[0], dict(starter[1])))
    out.extend(person_models(settings.models))  # type: ignore[arg-type]
    out.append(ModelChoice(UNTRAINED_ID, "untrained (random weights)", UNTRAINED_ID))
    return out


def find_model(settings: ServeSettings, model_id: str) -> ModelChoice | None:
    """The model of id ``model_id``, in either Unicode form (ids are in the composed one), or None."""
    model_id = unicodedata.normalize("NFC", model_id)
    return next((m for m in list_models(settings) if m.id == model_id), None)


BUILT_IN_EXAMPLES = ("demo_face.png", "demo_speech.wav", "demo_phonemes.txt")  # what make_demo_inputs writes


def prepare_examples(settings: ServeSettings) -> Path:
    """The examples folder, with the built-in example (a photo and synthesised speech) made once, offline."""
    folder = settings.data / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    if settings.examples and not (folder / "demo_face.png").exists():
        try:
            from ..demo import make_demo_inputs

            make_demo_inputs(folder)
        except Exception as e:  # noqa: BLE001 - the server runs without its example
            log.warning("the built-in example could not be made: %s", e)
    return folder
