"""The settings of a HyperLips-Lite network being trained: a new network from ``--set lite={...}``, or one loaded
with ``--init`` with some of its settings changed (what carries over, what is fitted afresh)."""

from __future__ import annotations

from ..errors import UserError


def _known_settings(settings: dict) -> None:
    import dataclasses

    from ..models import LiteConfig

    if not isinstance(settings, dict):
        raise UserError(f"--set lite= takes settings in braces, e.g. lite={{phones: true}}, got {settings!r}")
    known = {f.name for f in dataclasses.fields(LiteConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"lite settings not known: {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def new_network(settings: dict):
    """A fresh HyperLips-Lite network from ``--set lite={...}``; names it does not know, or values it cannot be
    built with, are the user's error."""
    from ..models import HyperLipsLite, LiteConfig

    _known_settings(settings)
    try:
        return HyperLipsLite(LiteConfig.from_dict(settings))
    except (ValueError, TypeError) as e:
        raise UserError(f"lite settings {settings}: {e}") from None


HEAD = "phone_head"  # the audio encoder's phone head (models.lite_audio)
BLEND_KEEPS = ("mel_smooth", "mel_norm", "phones", "phone_mix")  # the encoder's start is --init's while these stay


def needs_phone_head(old, new) -> bool:
    """Whether ``new`` (from :func:`with_settings`) has a phone head that ``old`` had not: nothing fitted it yet."""
    def has(net):
        return any(k.startswith(f"audio_encoder.{HEAD}.") for k in net.state_dict())

    return has(new) and not has(old)


def with_settings(gen, settings: dict, source, say=print, audio_steps: int = 1):
    """A loaded HyperLips-Lite network with some of its ``LiteConfig`` settings changed (``--set lite=...`` with
    ``--init``): only those that keep every parameter's shape (the mel's smoothing, the shapes' smoothing, the
    rows generated, ...) or only the audio encoder's (``phones``, ``phone_mix``); widths and the like need a new
    network. A changed audio input (``mel_smooth``, ``mel_norm``, ``phones``) makes the audio encoder's weights
    meaningless: it is re-initialised, for its fit to start afresh. A phone head (``phone_mix`` from 0) is added
    beside the ensemble, which is kept: see :func:`needs_phone_head` (its fit is in closed form)."""
    from ..models import LiteConfig

    _known_settings(settings)
    old = gen.config
    try:
        new_cfg = LiteConfig.from_dict({**old.to_dict(), **settings})
    except (ValueError, TypeError) as e:
        raise UserError(f"lite settings {settings}: {e}") from None
    changed = [k for k in sorted(settings) if getattr(new_cfg, k) != getattr(old, k)]
    if not changed:
        return gen
    new = new_network(new_cfg.to_dict()).to(next(gen.parameters()).device)
    want = new.state_dict()
    have = {k: v for k, v in gen.state_dict().items() if k in want}  # phone_mix to 0: the head goes
    fresh = {"mel_smooth", "mel_norm", "phones"} & set(changed)
    differ = [k for k, v in want.items() if k not in have or have[k].shape != v.shape]
    if fresh:  # the audio encoder starts afresh anyway: its layers may change
        differ = [k for k in differ if not k.startswith("audio_encoder.")]
    differ = [k for k in differ if not k.startswith(f"audio_encoder.{HEAD}.")]  # a new phone head is fitted
    if differ:
        raise UserError(f"--init {source}: the lite settings {', '.join(changed)} change the network's layers "
                        f"({differ[0]} and {len(differ) - 1} more): train a new network instead (without --init)")
    if fresh and audio_steps < 1:
        raise UserError(f"--init {source}: a changed {', '.join(sorted(fresh))} needs the audio encoder fitted "
                        "afresh: audio_steps must be at least 1")
    if fresh:  # the new network's own freshly initialised encoder stays; the rest comes from the file
        have = {k: v for k, v in have.items() if not k.startswith("audio_encoder.")}
    new.load_state_dict({**want, **have})
    what = ", ".join(f"{k} {getattr(old, k)} -> {getattr(new_cfg, k)}" for k in changed)
    if fresh:
        what += "; the audio encoder starts afresh"
    elif needs_phone_head(gen, new):
        what += "; a phone head is added beside the audio encoder, fitted before the renderer trains"
    say(f"--init {source}: {what}")
    return new
