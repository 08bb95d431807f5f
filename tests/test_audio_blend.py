"""How much of a one-person fit of the audio encoder is kept (``train/audio_blend.py``): chosen on the training
footage's own last part, never on the held-out part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_lite_training import TINY, _trainer, grid_view  # noqa: F401  (module fixture)
from test_train_data import small_dataset  # noqa: F401  (session fixture)


def _track(n: int, start: int = 0):
    times = np.arange(start, start + n, dtype=np.float64) / 25.0
    shapes = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, axis=1)
    return np.zeros((2, 8)), times, shapes, np.ones(n, bool)


def test_the_check_part_is_the_last_frames_of_the_footage_in_order():
    from hyperlips.train.audio_blend import split_tracks

    first, last = split_tracks([_track(10), _track(20, 10), _track(10, 30)], share=0.15)  # 40 frames: cut at 34
    assert [len(t[1]) for t in first] == [10, 20, 4] and [len(t[1]) for t in last] == [6]
    assert last[0][2][0, 0] == 34 and first[2][2][-1, 0] == 33  # the track across the cut is cut in time
    first, last = split_tracks([_track(100)])
    assert len(first[0][1]) == 85 and len(last[0][1]) == 15 and last[0][1][0] == 85 / 25.0
    first, last = split_tracks([_track(60), _track(40, 60)], share=0.4)  # the cut between two tracks
    assert [len(t[1]) for t in first] == [60] and [len(t[1]) for t in last] == [40]


def test_a_blend_is_the_share_of_the_fit_and_the_rest_of_the_start():
    from hyperlips.train.audio_blend import blend_states

    fitted = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(7)}
    start = {"w": torch.tensor([0.0, -1.0]), "n": torch.tensor(2)}
    out = blend_states(fitted, start, 0.6)
    assert torch.allclose(out["w"], torch.tensor([0.6, 1.4])) and int(out["n"]) == 7
    assert torch.equal(blend_states(fitted, start, 1.0)["w"], fitted["w"])


def _encoder(seed: int):
    from hyperlips.models.lite_audio import AudioShapeEncoder

    torch.manual_seed(seed)
    return AudioShapeEncoder(n_mels=80, width=16, members=1).eval()


def _taught_tracks(teacher, n_tracks: int = 4, frames: int = 50):
    """Random mel with the mouth shapes ``teacher`` reads from it: an encoder with the teacher's weights reads
    them perfectly (r 1)."""
    g = np.random.default_rng(0)
    tracks = []
    for _ in range(n_tracks):
        mel = g.normal(size=(80, frames * 80 // 25 + 8)).astype(np.float32)
        times = np.arange(frames) / 25.0
        with torch.no_grad():
            shapes = teacher.shapes_at(torch.from_numpy(mel)[None], torch.from_numpy(times * 80).float()[None])[0]
        tracks.append((mel, times, shapes.numpy(), np.ones(frames, bool)))
    return tracks


def test_a_fit_that_spoils_what_the_start_knew_is_kept_less_and_one_that_helps_is_kept_whole():
    from hyperlips.train.audio_blend import SHARES, choose_share, opening_r

    start = _encoder(0)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    tracks = _taught_tracks(start)  # the start already reads these mouths
    assert opening_r(start, tracks) == pytest.approx(1.0)
    seen = []

    def spoil(enc, part):  # a fit that forgets: noise on every weight
        seen.append(sum(len(t[1]) for t in part))
        with torch.no_grad():
            for p in enc.parameters():
                p.add_(0.5 * p.std() * torch.randn_like(p))

    share, scores, heard = choose_share(start, tracks, spoil)
    assert heard == {}  # no other voices given: none read
    assert seen == [170]  # the probe fitted on the first 85% of the 200 frames only
    assert share == min(SHARES) and scores[1.0] < scores[0.8] < scores[0.6], scores
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in before.items())  # the encoder itself untouched
    teacher = _encoder(1)
    tracks = _taught_tracks(teacher)

    def learn(enc, part):  # a fit that finds the teacher
        enc.load_state_dict(teacher.state_dict())

    share, scores, _ = choose_share(start, tracks, learn)
    assert share == 1.0 and scores[1.0] == pytest.approx(1.0) and scores[0.6] < 0.99, scores
    # too little to check on: the fit is kept whole, without a probe
    share, scores, heard = choose_share(start, [t[:1] + tuple(x[:20] for x in t[1:]) for t in tracks[:1]], spoil)
    assert (share, scores, heard) == (1.0, {}, {}) and len(seen) == 1


def _voices_read_by(encoder, n_voices: int = 2, marks: int = 40):
    """Random mel with phoneme marks that ``encoder`` tells apart perfectly: the half it reads most open are the
    vowels, the rest the bilabials (its AUC 1)."""
    from hyperlips.train.audio_blend import _openings

    g = np.random.default_rng(1)
    voices = []
    for _ in range(n_voices):
        mel = g.normal(size=(80, 400)).astype(np.float32)
        pos = np.sort(g.choice(np.arange(10, 390), size=marks, replace=False)).astype(np.float64)
        opening = _openings(encoder, mel, pos)
        voices.append((mel, pos, opening < np.median(opening)))
    return voices


def test_a_fit_that_reads_other_voices_the_wrong_way_round_is_kept_only_as_far_as_they_stay_read():
    """pose_source2's case: the fit reads the person's own mouth better at every share, but other voices' bilabials
    and vowels worse than the start; the largest share that still tells them apart (within the margin) is kept."""
    from hyperlips.train.audio_blend import FALLBACK_SHARES, SHARES, choose_share, voice_separation

    start, teacher = _encoder(0), _encoder(1)
    tracks = _taught_tracks(teacher)  # the person's mouth: the teacher's reading
    voices = _voices_read_by(start)  # other voices: the start reads them, the teacher does not
    assert voice_separation(start, voices) == 1.0 and voice_separation(teacher, voices) < 0.8

    def learn(enc, part):
        enc.load_state_dict(teacher.state_dict())

    share, scores, heard = choose_share(start, tracks, learn, voices=voices, margin=0.1)
    assert heard[0.0] == 1.0 and all(heard[s] < 0.9 for s in SHARES), heard  # none of the usual shares passes
    assert scores[1.0] > scores[0.6]  # though the whole fit reads the person best
    assert share in FALLBACK_SHARES and heard[share] >= 0.9, (share, heard)
    assert all(heard[s] < 0.9 for s in FALLBACK_SHARES if s > share)  # the largest that passes
    # without voices, or with a margin that lets anything through, the person's own reading decides alone
    assert choose_share(start, tracks, learn)[0] == 1.0
    assert choose_share(start, tracks, learn, voices=voices, margin=1.0)[0] == 1.0
    # a fit that reads other voices as well as the start does is not held back
    share, _, heard = choose_share(start, tracks, learn, voices=_voices_read_by(teacher), margin=0.1)
    assert share == 1.0 and heard[1.0] == 1.0


def test_other_voices_are_espeak_ngs_read_as_the_network_reads_speech_and_the_starter_tells_them():
    """The voices the guard uses: espeak-ng's, each with its bilabials and vowels marked, the mel normalised and
    the phones below it as the shipped starter reads them; the starter tells their /p b m/ from vowels."""
    from hyperlips.models import load_checkpoint, shipped
    from hyperlips.train.audio_blend import OTHER_VOICES, other_voices, voice_separation

    net, _ = load_checkpoint(shipped.starter().path, name="hyperlips-lite", device="cpu")
    voices = other_voices(net)
    assert len(voices) == len(OTHER_VOICES)
    for mel, pos, bilabial in voices:
        assert mel.shape[0] == 80 + 42 and mel.shape[1] > 800  # about 11 s at 80 mel steps a second
        assert mel[80:].sum(axis=0).max() == 1.0  # one phone a step below the mel
        assert 25 <= bilabial.sum() and 25 <= (~bilabial).sum() and np.all(np.diff(pos) >= 0)
    assert voice_separation(net.audio_encoder, voices) > 0.55  # 0.58 measured


def test_finetune_from_weights_keeps_the_chosen_share_of_its_encoders_fit(grid_view, tmp_path, monkeypatch, capfd):
    """A run from --init weights with ``audio_blend`` fits the encoder as without it, then keeps the share the probe
    chose, the rest its starting weights; the probe's choice is said. Not on a re-initialised encoder."""
    import hyperlips.train.audio_blend as ab
    from hyperlips.models import load_checkpoint

    first = _trainer(grid_view, tmp_path / "start", max_steps=1, audio_steps=5).fit()
    start = load_checkpoint(first.model)[0].audio_encoder.state_dict()
    plain = _trainer(grid_view, tmp_path / "plain", max_steps=1, audio_steps=20, init=str(first.model)).fit()
    fitted = load_checkpoint(plain.model)[0].audio_encoder.state_dict()
    asked = []

    def chosen(enc, tracks, fit, voices, margin):  # the probe's choice, without its fit (whose dropout would move the RNG)
        asked.append({k: v.clone() for k, v in enc.state_dict().items()})
        assert len(voices) == 3 and margin == 0.1  # espeak-ng's voices, read as the network reads speech
        return 0.6, {1.0: 0.2, 0.8: 0.3, 0.6: 0.4}, {0.0: 0.7, 1.0: 0.5, 0.8: 0.55, 0.6: 0.62}

    monkeypatch.setattr(ab, "choose_share", chosen)
    tr = _trainer(grid_view, tmp_path / "blend", max_steps=1, audio_steps=20, init=str(first.model), audio_blend=True)
    tr.quiet = False
    blended = load_checkpoint(tr.fit().model)[0].audio_encoder.state_dict()
    assert len(asked) == 1 and all(torch.equal(asked[0][k], v) for k, v in start.items())  # offered the start
    want = ab.blend_states(fitted, start, 0.6)
    assert all(torch.allclose(blended[k].float(), want[k].float(), atol=1e-6) for k in want)
    assert not torch.allclose(blended["head.weight"], fitted["head.weight"])
    err = capfd.readouterr().err
    assert "0.6 of the fit kept, 0.4 of its starting weights" in err
    assert "with each share of the fit: 1.0 0.50, 0.8 0.55, 0.6 0.62, 0.0 0.70 (a share may read them at most 0.10 " \
           "below the starting weights, share 0.0)" in err
    # a changed audio input starts the encoder afresh: nothing to blend with
    fresh = _trainer(grid_view, tmp_path / "fresh", max_steps=1, audio_steps=5, init=str(first.model),
                     audio_blend=True, lite={**TINY["lite"], "mel_smooth": 12})
    fresh.quiet = False
    fresh.fit()
    assert len(asked) == 1 and "kept" not in capfd.readouterr().err


def test_finetune_blends_by_default_only_from_weights():
    from hyperlips.train.finetune import FINETUNE_LITE_DEFAULTS

    assert FINETUNE_LITE_DEFAULTS["audio_blend"] is True
