"""Phones read from speech (``media.phones``) and HyperLips-Lite networks that read them: the recogniser on
synthesised and real speech, the one-hot rows at the mel's rate, the rows the network, ``sync``, the training data
and ``live`` give it, and what happens without the recogniser installed."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from hyperlips.media.phones import N_PHONES, PHONES, SILENCE, phone_track, read_phones

def test_the_recogniser_reads_the_words_spoken(real_data):
    """face2.mp4 opens with "the heart of my California ...": the phones AA R of "heart", then M AY of "my" (the
    lips close for its /m/ about 0.65 s in), in that order."""
    from hyperlips.media.audio import load_audio

    wav = load_audio(real_data / "retalking" / "face2.mp4", 16000)
    ids = read_phones(wav)
    assert ids.dtype == np.int8 and len(ids) == -(-len(wav) // 160)
    assert np.array_equal(read_phones(wav), ids)  # the same phones every time
    start = [PHONES[i] for k, i in enumerate(ids[15:95]) if k == 0 or i != ids[15 + k - 1]]
    it = iter(start)
    assert all(p in it for p in ("AA", "R", "M", "AY")), start
    m = [k / 100 for k in range(len(ids)) if PHONES[ids[k]] == "M"]
    assert any(0.6 <= t <= 0.75 for t in m), m


def test_real_speech_reads_as_many_phones_and_silence_as_silence(real_data):
    from hyperlips.media.audio import load_audio

    ids = read_phones(load_audio(real_data / "hyperlips" / "audio1.wav", 16000))
    assert len(set(ids.tolist())) >= 15 and np.mean(ids == SILENCE) < 0.4
    assert np.all(read_phones(np.zeros(16000, np.float32)) == SILENCE)
    assert len(read_phones(np.zeros(0, np.float32))) == 0
    with pytest.raises(ValueError, match="16000 Hz"):
        read_phones(np.zeros(100, np.float32), 22050)


def test_speech_too_short_for_any_phone_reads_as_silence(tmp_path):
    """Under about 30 ms the recogniser finds no segment at all (its list is None, not empty): read as silence, and
    ``sync`` with a network that reads phones makes its one frame instead of failing."""
    from helpers import write_wav
    from hyperlips.models import HyperLipsLite, LiteConfig
    from hyperlips.pipeline import LipSync

    for n in (1, 160, 400, 480):  # up to 30 ms at 16 kHz
        tone = 0.3 * np.sin(np.arange(n) * 0.2).astype(np.float32)
        for wav in (np.zeros(n, np.float32), tone):
            ids = read_phones(wav)
            assert len(ids) == -(-n // 160) and np.all(ids == SILENCE)
    import cv2

    from hyperlips.demo import demo_face

    video = tmp_path / "face.png"
    cv2.imwrite(str(video), demo_face())
    torch.manual_seed(0)
    ls = LipSync(network=HyperLipsLite(LiteConfig(phones=True)).eval(), device="cpu", progress=False, mouth="render")
    rep = ls.sync(video, write_wav(tmp_path / "blip.wav", 0.025), tmp_path / "out.mp4")
    assert rep.frames == 1 and (tmp_path / "out.mp4").is_file()


def test_the_track_is_one_hot_at_the_mel_rate():
    ids = np.array([3, 3, 5, 5, 5, 7, 7, 7, 7, 9], np.int8)  # 10 ms frames
    tr = phone_track(ids, 10)  # 12.5 ms frames: frame j takes the phone at j * 12.5 ms
    assert tr.shape == (N_PHONES, 10) and tr.dtype == np.float32
    assert np.array_equal(tr.sum(axis=0), np.ones(10))
    # frames at 0, 1.25, 2.5, 3.75, 5, 6.25, 7.5, 8.75 (10 ms units), then past the end
    assert tr.argmax(axis=0).tolist() == [3, 3, 5, 5, 7, 7, 7, 7, SILENCE, SILENCE]


def test_a_lite_network_with_phones_takes_their_rows_below_the_mel():
    from hyperlips.generator_io import network_mel, network_mel_windows
    from hyperlips.models import HyperLipsLite, LiteConfig

    torch.manual_seed(0)
    net, plain = HyperLipsLite(LiteConfig(phones=True)).eval(), HyperLipsLite(LiteConfig()).eval()
    assert net.audio_rows == 80 + N_PHONES and plain.audio_rows == 80
    faces = torch.rand(2, 6, 128, 128)
    assert net(torch.randn(2, 1, 80 + N_PHONES, net.mel_steps), faces).shape == (2, 3, 128, 128)
    with pytest.raises(ValueError, match=r"audio must be \(2,1,122,"):
        net(torch.randn(2, 1, 80, net.mel_steps), faces)
    mel = np.random.default_rng(0).normal(size=(80, 200)).astype(np.float32)
    ids = np.repeat(np.arange(25) % N_PHONES, 10).astype(np.int8)  # 2.5 s of phones, 10 frames each
    full = network_mel(net, mel, ids)
    assert full.shape == (80 + N_PHONES, 200)
    assert np.array_equal(full[80:], phone_track(ids, 200))
    assert np.array_equal(network_mel(net, mel, None)[80:], np.zeros((N_PHONES, 200)))  # the sound alone
    assert np.array_equal(network_mel(plain, mel, ids), network_mel(plain, mel))  # a network without phones
    w = network_mel_windows(net, full, np.array([0.0, 1.0]), 25.0)
    assert w.shape == (2, 1, 80 + N_PHONES, net.mel_steps)
    centre = net.mel_steps // 2
    assert w[1, 0, 80:, centre].argmax() == ids[int((80 - net.mel_steps // 2 + centre) * 1.25)]


def test_sync_reads_the_phones_and_without_them_is_live(real_data, tmp_path):
    """``sync`` gives the network the speech's phones; with ``phones=False`` it gives zeros, which is what
    ``live`` streams (byte for byte, with the offline statistics); the phones change the frames."""
    from helpers import cut_audio, cut_video, spied_frames
    from hyperlips.live import SpeechStats
    from hyperlips.media.audio import load_audio, melspectrogram
    from hyperlips.models import HyperLipsLite, LiteConfig
    from hyperlips.pipeline import LipSync

    speech = cut_audio(real_data / "retalking" / "audio1.wav", tmp_path / "speech.wav", 1.6)
    video = cut_video(real_data / "retalking" / "face2.mp4", tmp_path / "idle.mp4", 20, size=360)
    wav = load_audio(speech)
    torch.manual_seed(0)
    net = HyperLipsLite(LiteConfig(phones=True, mel_smooth=12)).eval()
    seen = []
    hook = net.audio_encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0][:, 0, 80:].float()))
    with_phones = LipSync(network=net, device="cpu", progress=False, batch_size=1)
    assert with_phones.reads_phones
    a = spied_frames(lambda: with_phones.sync(video, speech, tmp_path / "a.mp4"))
    read = torch.cat(seen)
    per_step = read.sum(dim=1)  # one phone per mel step of the speech; none in the windows' steps beyond it
    assert bool(((per_step == 0) | (per_step == 1)).all()) and float((per_step == 1).float().mean()) > 0.8
    assert len(set(read[:, :, 28].argmax(dim=1).tolist())) >= 5  # the phones change with the speech
    seen.clear()
    # fp32: in bf16 (auto on a CPU that has it) a few frames of the stream differ from sync's by up to 5 grey
    # levels (measured on one such CPU), rounding that this comparison of what the network is given is not about
    without = LipSync(network=net, device="cpu", progress=False, batch_size=1, phones=False, precision="fp32")
    assert not without.reads_phones
    b = spied_frames(lambda: without.sync(video, speech, tmp_path / "b.mp4"))
    assert torch.count_nonzero(torch.cat(seen)) == 0
    hook.remove()
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))
    n = 640
    live = [f.image.copy() for f in without.stream(video, iter([wav[i:i + n] for i in range(0, len(wav), n)]),
                                                   speech_stats=SpeechStats.of(melspectrogram(wav), 12))]
    assert len(live) == len(b) == 40
    assert all(np.array_equal(x, y) for x, y in zip(b, live))


def test_without_the_recogniser_sync_says_so_and_reads_the_sound_alone(monkeypatch):
    import hyperlips.media.phones as phones
    from hyperlips.errors import UserError
    from hyperlips.models import HyperLipsLite, LiteConfig
    from hyperlips.pipeline import LipSync

    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # import fails
    assert not phones.available()
    with pytest.raises(UserError, match="pip install pocketsphinx"):
        read_phones(np.zeros(1600, np.float32))
    import warnings

    from hyperlips.media.phone_marks import PhoneMark

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said where the recogniser would run, not on making the LipSync
        ls = LipSync(network=HyperLipsLite(LiteConfig(phones=True)), device="cpu", progress=False)
    assert not ls.reads_phones
    wav = np.zeros(16000, np.float32)
    with pytest.warns(Warning, match="pocketsphinx package is not installed"):
        assert ls.speech_phones(wav) is None
    with warnings.catch_warnings():  # phoneme timings given (sync --phonemes, the demo): they are the phones; the
        warnings.simplefilter("error")  # warning told to install a package that changes nothing
        assert ls.speech_phones(wav, marks=[PhoneMark(0.1, 0.3, "AA")]) is not None


def test_training_frames_carry_the_clips_phones_and_preprocess_adds_missing_ones(more_data, tmp_path):
    from hyperlips.data.datasets import Manifest
    from hyperlips.data.frames import FrameDataset
    from hyperlips.data.preprocess import PreprocessOptions, preprocess
    from hyperlips.errors import UserError
    from hyperlips.media.audio import load_audio

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(more_data / "av2av" / "TRajLqEaWhQ_00002.mp4", src / "clip.mp4")  # 2.8 s of speech
    dst = tmp_path / "data"
    opts = PreprocessOptions(speaker="one", split="time")
    preprocess(src, dst, opts, workers=1, progress=False)
    clip = Manifest.load(dst).open_clips("train")[0]
    path = clip.dir / "phones.npy"
    ids = np.load(path)
    assert np.array_equal(ids, read_phones(load_audio(src / "clip.mp4", 16000)))
    ds = FrameDataset([clip], 57, phones=True)
    mel, fill = ds.clip_mel(0)
    assert mel.shape[0] == 80 + N_PHONES and np.array_equal(mel[80:], phone_track(ids, mel.shape[1]))
    sample = ds[0]
    assert sample["mel"].shape == (1, 80 + N_PHONES, 57)
    assert FrameDataset([clip], 57)[0]["mel"].shape == (1, 80, 57)
    # a clip made before phones were read: the network says what to do, and a second run adds them
    path.unlink()
    fresh = Manifest.load(dst).open_clips("train")[0]
    with pytest.raises(UserError, match="run `hyperlips preprocess` again"):
        FrameDataset([fresh], 57, phones=True).clip_mel(0)
    report = preprocess(src, dst, opts, workers=1, progress=False)
    assert report.done == 0 and report.existing == 1
    assert np.array_equal(np.load(path), ids)


def test_fitting_keeps_or_drops_a_samples_phones_whole():
    from hyperlips.train.lite_audio import PHONE_DROP, augment

    g = torch.Generator().manual_seed(0)
    mel = torch.zeros(400, 80 + N_PHONES, 32)
    mel[:, 80 + 5] = 1.0  # every step the same phone
    out = augment(mel, g)
    phones = out[:, 80:]
    kept = phones.sum(dim=(1, 2)) == 32
    dropped = phones.sum(dim=(1, 2)) == 0
    assert bool((kept | dropped).all())  # whole, untouched (no noise, no shift) or all zero
    assert abs(float(dropped.float().mean()) - PHONE_DROP) < 0.08
    assert float(out[:, :80].abs().mean()) > 0  # the mel rows are augmented (noise, gain)


def test_a_starter_without_phones_takes_them_with_a_fresh_audio_encoder():
    from hyperlips.models import HyperLipsLite, LiteConfig
    from hyperlips.train.lite_settings import with_settings

    torch.manual_seed(0)
    old = HyperLipsLite(LiteConfig(mel_smooth=12))
    said = []
    new = with_settings(old, {"phones": True}, "old.safetensors", said.append, audio_steps=100)
    assert new.phones and new.audio_rows == 80 + N_PHONES and "starts afresh" in said[0]
    have = old.state_dict()
    for k, v in new.state_dict().items():  # the renderer as it was
        if not k.startswith("audio_encoder."):
            assert torch.equal(v, have[k]), k
    assert new.audio_encoder.body[0].weight.shape[1] == 80 + N_PHONES


def _phone_tracks(seed: int, n_clips: int = 6, seconds: float = 8.0):
    """Clips whose mouth shape is a fixed shape per phone, slurred over 0.1 s: (mel + phone rows, frame times,
    shapes, ok) as the audio encoder's fit takes them."""
    per_phone = np.random.default_rng(123).normal(size=(N_PHONES, 106))  # the same for every clip
    rng = np.random.default_rng(seed)
    tracks = []
    for _ in range(n_clips):
        ids = np.repeat(rng.integers(0, N_PHONES, int(seconds * 10)), 10).astype(np.int8)  # 0.1 s per phone
        steps = int(seconds * 80)
        rows = np.concatenate([rng.normal(size=(80, steps)).astype(np.float32), phone_track(ids, steps)])
        times = np.arange(0.2, seconds - 0.2, 0.04)
        idx = np.minimum((times * 100).astype(int), len(ids) - 1)
        shapes = np.stack([per_phone[ids[np.clip(idx + d, 0, len(ids) - 1)]] for d in (-5, 0, 5)]).mean(0)
        tracks.append((rows, times, shapes.astype(np.float32), np.ones(len(times), bool)))
    return tracks


def test_the_phone_head_learns_what_each_phone_looks_like_and_is_mixed_in_only_where_phones_were_read():
    from hyperlips.models.lite_audio import AudioShapeEncoder
    from hyperlips.train.lite_audio import fit_audio_encoder, fit_phone_head

    torch.manual_seed(0)
    enc = AudioShapeEncoder(80 + N_PHONES, 32, 106, 2, 0.3, 80.0, N_PHONES, 0.4)
    train, test = _phone_tracks(0), _phone_tracks(1)[:2]
    fit_audio_encoder(enc, train, steps=3, batch=2)  # the ensemble's fit, then the head's
    plain = AudioShapeEncoder(80 + N_PHONES, 32, 106, 2, 0.3, 80.0).eval()
    plain.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("phone_head.")})
    fitted = enc.phone_head.weight.detach().clone()
    std = np.concatenate([t[2] for t in train]).std(0) + 1e-3  # as the fit standardises
    assert fit_phone_head(enc, train, std) == sum(len(t[1]) for t in train)
    assert torch.allclose(enc.phone_head.weight, fitted, atol=1e-5)  # the fit had fitted the head
    torch.set_grad_enabled(False)
    for rows, times, shapes, _ in test:  # unheard clips of the same phones: the head alone reads their shapes
        m = torch.from_numpy(rows)[None]
        head = enc.phone_head(enc.phone_steps(m))
        pos = torch.from_numpy(times * 80.0)[None].float()
        got = enc.read(head, pos)[0].numpy()
        r = np.corrcoef(got.ravel(), shapes.ravel())[0, 1]
        assert r > 0.9, r
        # the stream: 0.6 x the ensemble + 0.4 x the head where phones were read; the ensemble alone without them
        mixed, ens = enc.shapes_at(m, pos), plain.shapes_at(m, pos)
        assert torch.allclose(mixed, 0.6 * ens + 0.4 * enc.read(head, pos), atol=1e-5)
        silent = m.clone()
        silent[:, 80:] = 0
        assert torch.equal(enc.shapes_at(silent, pos), plain.shapes_at(silent, pos))
        at = torch.arange(40, 400, 36)  # mel steps: windows from 28 steps before (on the stream's output grid)
        windows = torch.stack([m[0, :, int(p) - 28: int(p) + 29] for p in at])[:, None]
        assert torch.allclose(enc(windows), enc.shapes_at(m, at[None].float())[0], atol=1e-5)  # window = stream
        assert torch.equal(enc(windows.clone().index_fill_(2, torch.arange(80, 80 + N_PHONES), 0)),
                           plain(windows.clone().index_fill_(2, torch.arange(80, 80 + N_PHONES), 0)))
    torch.set_grad_enabled(True)


def test_a_phone_head_needs_phones_and_a_starter_takes_one_with_a_fresh_audio_encoder():
    from hyperlips.errors import UserError
    from hyperlips.models import HyperLipsLite, LiteConfig
    from hyperlips.train.lite_settings import needs_phone_head, new_network, with_settings

    with pytest.raises(ValueError, match="needs phones"):
        HyperLipsLite(LiteConfig(phone_mix=0.4))
    with pytest.raises(UserError, match="needs phones"):
        new_network({"phone_mix": 0.4})
    with pytest.raises(UserError, match="widths must be 4"):
        new_network({"widths": [16, 32]})
    with pytest.raises(UserError, match="not known: phone_mixx"):
        new_network({"phone_mixx": 0.4})
    torch.manual_seed(0)
    old = HyperLipsLite(LiteConfig(phones=True, mel_smooth=12))
    said = []
    new = with_settings(old, {"phone_mix": 0.4}, "old.safetensors", said.append, audio_steps=0)
    assert new.audio_encoder.phone_mix == 0.4 and "phone head is added" in said[0] and needs_phone_head(old, new)
    assert new.audio_encoder.phone_head.weight.shape == (106, N_PHONES, 11)
    have = old.state_dict()
    for k, v in new.state_dict().items():  # everything but the new head as it was, the ensemble too
        if ".phone_head." not in k:
            assert torch.equal(v, have[k]), k
    again = with_settings(new, {"phone_mix": 0.3}, "new.safetensors", said.append)
    assert not needs_phone_head(new, again) and torch.equal(again.audio_encoder.phone_head.weight,
                                                            new.audio_encoder.phone_head.weight)
    gone = with_settings(new, {"phone_mix": 0.0}, "new.safetensors", said.append)
    assert not hasattr(gone.audio_encoder, "phone_head") and torch.equal(gone.audio_encoder.head.weight,
                                                                         old.audio_encoder.head.weight)


def test_a_person_model_from_scratch_reads_phones_unless_told_otherwise(monkeypatch):
    from hyperlips.errors import UserError
    from hyperlips.media import phones
    from hyperlips.train.finetune import scratch_settings
    from hyperlips.train.lite_settings import new_network

    monkeypatch.setattr(phones, "available", lambda: True)
    assert scratch_settings() == {"phones": True} and new_network(scratch_settings()).phones
    assert scratch_settings({"phones": False, "mel_smooth": 12}) == {"phones": False, "mel_smooth": 12}
    with pytest.raises(UserError, match="in braces"):
        scratch_settings(5)
    with pytest.raises(UserError, match="in braces"):
        new_network(5)
    monkeypatch.setattr(phones, "available", lambda: False)  # no recogniser: a network of the sound alone
    assert scratch_settings() == {} and scratch_settings({"mel_smooth": 12}) == {"mel_smooth": 12}
