"""Training jobs of ``hyperlips serve``, run against a stand-in for the finetune command that follows its
``progress.json`` contract (stage, step, elapsed_s, eta_s, fraction, val, preview)."""

from __future__ import annotations

import json
import time

import pytest
from helpers import write_wav
from serve_kit import Client, face_photo, fake_finetune, quick_settings, silent_video

from hyperlips.serve.server import App


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A short video with its own sound (what a person model is trained from)."""
    import soundfile as sf

    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    d = tmp_path_factory.mktemp("train_inputs")
    silent = silent_video(d / "silent.mp4", frames=25)
    wav = load_audio(write_wav(d / "speech.wav", 1.0))
    out = d / "person.mp4"
    with FrameReader(silent) as r, VideoWriter(out, r.width, r.height, r.fps, audio=wav, sample_rate=16000) as w:
        for fr in r:
            w.write(fr.image)
    sf.write(str(d / "speech.wav"), wav, 16000)
    return {"video": out, "photo": face_photo(d / "face.png"), "speech": d / "speech.wav"}


@pytest.fixture
def start(tmp_path):
    apps = []

    def go(mode: str = "ok", **kw) -> tuple[App, Client]:
        cmd = fake_finetune(tmp_path / "fake", mode)
        app = App(quick_settings(tmp_path / "data", finetune_command=cmd, **kw)).start()
        apps.append(app)
        return app, Client(app.url)

    yield go
    for app in apps:
        app.stop()


def test_training_job_reports_progress_previews_and_publishes_the_model(start, clip):
    app, client = start()
    video = client.upload_file(clip["video"])
    job = client.submit(kind="finetune", video=video["id"], name="anna", minutes=2)
    done, seen = client.wait(job["id"], timeout=600, every=0.1)
    assert done["state"] == "done", done["message"]
    assert done["result"] == {"model": "person:anna", "name": "anna"}

    running = [s for s in seen if s["state"] == "running" and s["stage"] == "train"]
    assert running, "no training progress was seen"
    log = client.request("GET", f"/api/jobs/{job['id']}/log")[2].decode()
    assert log.count("step 10: mouth_l1") == 1  # the trainer's lines, once each (they reach the log as they come)
    assert {"step", "elapsed_s", "eta_s", "fraction", "val", "preview"} <= set(running[-1]["progress"])
    assert 0 < running[-1]["fraction"] < 1 and running[-1]["progress"]["val"]["val/mouth_l1"] > 0
    assert [s["progress"]["step"] for s in running] == sorted(s["progress"]["step"] for s in running)

    status, headers, png = client.request("GET", f"/api/jobs/{job['id']}/preview")
    assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG")
    # the preview as a link, never where the server keeps it
    assert {s["progress"]["preview"] for s in seen + [done] if s["progress"].get("preview")} == \
        {f"/api/jobs/{job['id']}/preview"}
    assert not any(str(app.settings.data) in json.dumps(s) for s in seen + [done])

    # the command the job ran: the contract's arguments
    args = json.loads((app.settings.data / "jobs" / job["id"] / "work" / "args.json").read_text())
    work = app.settings.data / "jobs" / job["id"] / "work"
    assert args["minutes"] == 2 and args["checkpoint"] is None and "--from-scratch" not in args["argv"]
    assert done["params"]["start_from"] == "default"  # left out: the command's own default, the shipped starter
    assert args["argv"][args["argv"].index("--work") + 1] == str(work)

    # the model is in the models folder and usable for lip-sync
    assert (app.settings.models / "anna.safetensors").is_file()
    models = [m["id"] for m in client.json("GET", "/api/models")[1]["models"]]
    assert models == ["starter", "person:anna", "untrained"]
    # a second model of the same name does not overwrite the first
    again = client.submit(kind="finetune", video=video["id"], name="anna", minutes=2, start_from="person:anna")
    done2, _ = client.wait(again["id"], timeout=600)
    assert done2["result"]["name"] == "anna-2"
    args = json.loads((app.settings.data / "jobs" / again["id"] / "work" / "args.json").read_text())
    assert args["checkpoint"] == str(app.settings.models / "anna.safetensors") and "--from-scratch" not in args["argv"]
    # the page's "from scratch" (null) trained from the starter, the command's default, while saying null
    scratch = client.submit(kind="finetune", video=video["id"], name="fresh", minutes=2, start_from=None)
    assert scratch["params"]["start_from"] is None and client.wait(scratch["id"], timeout=600)[0]["state"] == "done"
    args = json.loads((app.settings.data / "jobs" / scratch["id"] / "work" / "args.json").read_text())
    assert "--from-scratch" in args["argv"] and args["checkpoint"] is None

    photo = client.upload_file(clip["photo"])
    speech = client.upload_file(clip["speech"])
    synced = client.submit(video=photo["id"], audio=speech["id"], model="person:anna-2")
    assert client.wait(synced["id"], timeout=900)[0]["state"] == "done"


def test_a_running_training_jobs_log_shows_the_trainers_lines(start, clip, monkeypatch):
    """The log of a training job was empty until the trainer ended (and stayed empty when it was cancelled)."""
    monkeypatch.setenv("FAKE_FINETUNE_PAUSE", "2.5")
    monkeypatch.setenv("FAKE_FINETUNE_STEPS", "4")  # 10 s of training
    app, client = start()
    video = client.upload_file(clip["video"])
    job = client.submit(kind="finetune", video=video["id"], name="anna", minutes=2)
    while "step 10: mouth_l1" not in client.request("GET", f"/api/jobs/{job['id']}/log")[2].decode():
        now = client.job(job["id"])
        assert now["state"] in ("queued", "running") and (now["progress"] or {}).get("step", 0) < 40, now
        time.sleep(0.2)
    client.json("POST", f"/api/jobs/{job['id']}/cancel")
    assert client.wait(job["id"], timeout=120)[0]["state"] == "cancelled"
    assert "step 10: mouth_l1" in client.request("GET", f"/api/jobs/{job['id']}/log")[2].decode()


def test_training_errors_reach_the_job_as_one_line(start, clip):
    _, client = start("fail")
    video = client.upload_file(clip["video"])
    job = client.submit(kind="finetune", video=video["id"], name="bob", minutes=2)
    failed, _ = client.wait(job["id"], timeout=600)
    assert failed["state"] == "failed"
    assert failed["message"] == "person.mp4 is too short to fine-tune on: 20 frames"  # the uploaded name, not the stored one


def test_a_training_job_learns_the_face_asked_for_and_reports_its_warnings(start, clip):
    """A training job could not say which person to learn (`face`/`face_box` refused), and what the trainer warned
    of (two people in view: perhaps the wrong one learnt) stayed in its log, the job "done" without a word."""
    app, client = start("warn")
    video = client.upload_file(clip["video"])
    job = client.submit(kind="finetune", video=video["id"], name="ann", minutes=2, face=1)
    done, _ = client.wait(job["id"], timeout=600)
    assert done["state"] == "done" and done["params"]["face"] == 1
    said = "person.mp4: 30 of its 30 frames show more than one face"  # the uploaded name, not the stored one
    assert done["message"] == f"done, with a warning: {said}" and done["result"]["warnings"] == [said], done
    args = json.loads((app.settings.data / "jobs" / job["id"] / "work" / "args.json").read_text())
    assert args["argv"][-2:] == ["--face", "1"]
    job = client.submit(kind="finetune", video=video["id"], name="bo", minutes=2, face_box=[0, 0, 100.5, 80])
    done, _ = client.wait(job["id"], timeout=600)
    args = json.loads((app.settings.data / "jobs" / job["id"] / "work" / "args.json").read_text())
    assert args["argv"][-1] == "--face-box=0,0,100.5,80"
    status, err = client.json("POST", "/api/jobs", {"kind": "finetune", "video": video["id"], "name": "x", "face": 1,
                                                    "face_box": [0, 0, 10, 10]})
    assert status == 400 and "not both" in err["error"]
    assert done["result"]["face_box"] == [0, 0, 100.5, 80]  # the person it learnt, for the sync jobs that use it
    status, err = client.json("POST", "/api/jobs", {"kind": "finetune", "video": video["id"], "name": "y",
                                                    "face_box": [5000, 0, 5100, 50]})  # queued, then failed
    w, h = video["width"], video["height"]
    assert status == 400 and f"face_box [5000, 0, 5100, 50] lies outside the {w}x{h} picture of person.mp4" in \
        err["error"], err
    status, job = client.json("POST", "/api/jobs", {"kind": "finetune", "video": video["id"], "name": "z",
                                                    "face": 1.0})  # as JSON from some languages writes it
    assert status == 201 and job["params"]["face"] == 1
    done, _ = client.wait(job["id"], timeout=600)
    assert done["result"]["face"] == 1


def test_a_crashing_trainer_fails_its_job_with_its_last_words(start, clip):
    _, client = start("crash")
    video = client.upload_file(clip["video"])
    job = client.submit(kind="finetune", video=video["id"], name="bob", minutes=2)
    failed, _ = client.wait(job["id"], timeout=600)
    assert failed["state"] == "failed"
    assert failed["message"].startswith("training stopped with exit code 1: RuntimeError: the fake trainer fell over")
    assert client.json("GET", "/api/health")[0] == 200


def test_a_preview_outside_the_job_folder_is_not_served(start, clip):
    _, client = start("escape")
    video = client.upload_file(clip["video"])
    job = client.submit(kind="finetune", video=video["id"], name="eve", minutes=2)
    client.wait(job["id"], stages=("train",), timeout=600, every=0.05)
    status, _, body = client.request("GET", f"/api/jobs/{job['id']}/preview")
    assert status == 404 and not body.startswith(b"\x89PNG")


def test_a_training_request_without_a_budget_fits_the_servers_longest(start, clip):
    """A server allowing at most 5 minutes refused every training request that left the budget out (the default, 10,
    past its longest): the default is the longest it allows."""
    _, client = start(max_train_minutes=5)
    video = client.upload_file(clip["video"])
    status, job = client.json("POST", "/api/jobs", {"kind": "finetune", "video": video["id"], "name": "anna"})
    assert status == 201 and job["params"]["minutes"] == 5, job


def test_training_requests_are_checked(start, clip):
    _, client = start()
    video = client.upload_file(clip["video"])
    photo = client.upload_file(clip["photo"])
    speech = client.upload_file(clip["speech"])
    for params, words in [({"video": photo["id"], "name": "x"}, "not from a photo"),
                          ({"video": speech["id"], "name": "x"}, "not from sound alone"),
                          ({"video": video["id"], "name": "../x"}, "name: give the model a name"),
                          ({"video": video["id"], "name": "anna\n"}, "name: give the model a name"),
                          ({"video": video["id"], "name": "anna "}, "name: give the model a name"),
                          ({"video": video["id"], "name": "x", "minutes": 0}, "time budget"),
                          ({"video": video["id"], "name": "x", "minutes": True}, "time budget"),  # (was a minute)
                          ({"video": video["id"], "name": "x", "minutes": 0.3}, "at least 2"),  # (taken, then refused
                          # a moment later by the training: "--minutes 0.3 leaves 0 s to train")
                          # (taken, then trained or refused by the machine's load: 10 s left to prepare the footage)
                          ({"video": video["id"], "name": "x", "minutes": 1}, "at least 2 and at most 120 minutes"),
                          ({"video": video["id"], "name": "x", "minutes": 10_000}, "at most 120 minutes"),
                          ({"video": video["id"], "name": "x", "start_from": "person:nobody"}, "no model")]:
        status, err = client.json("POST", "/api/jobs", {"kind": "finetune", **params})
        assert status == 400 and words in err["error"], (params, err)
    from hyperlips.serve.jobs import MIN_TRAIN_MINUTES
    from hyperlips.train.finetune import MIN_TRAIN_S, RESERVE_S

    assert MIN_TRAIN_MINUTES * 60 - RESERVE_S - MIN_TRAIN_S >= 60  # the least budget leaves a minute to prepare
    assert client.json("GET", "/api/info")[1]["limits"]["min_train_minutes"] == MIN_TRAIN_MINUTES  # the page's min
    status, job = client.json("POST", "/api/jobs", {"kind": "finetune", "video": video["id"], "name": "Élodie Dupont"})
    assert status == 201 and job["params"]["name"] == "Élodie Dupont", job  # (refused: letters of one script only)
    import unicodedata

    status, job = client.json("POST", "/api/jobs", {"kind": "finetune", "video": video["id"],
                                                    "name": unicodedata.normalize("NFD", "José")})  # a Mac's keyboard
    assert status == 201 and job["params"]["name"] == "José", job  # (refused: the accent's mark is no letter)


def test_a_trained_model_is_published_beside_a_twin_of_its_name_in_another_unicode_form(start, tmp_path):
    """A model "José" trained where a Mac's decomposed José.safetensors is: it was written under the name (no such
    file), and the catalog, which lists one model per name as typed, showed the older one under the new id."""
    import unicodedata

    app, _ = start()
    models = app.settings.models
    models.mkdir(parents=True, exist_ok=True)
    (models / unicodedata.normalize("NFD", "José.safetensors")).write_bytes(b"old")
    job_dir = app.settings.data / "jobs" / "0123456789abcdef"
    job_dir.mkdir(parents=True)
    (job_dir / "model.safetensors").write_bytes(b"new")
    result = app.runner._publish({"id": "0123456789abcdef", "params": {"name": "José"}},
                                 {"model_file": "model.safetensors"})
    assert result["name"] == "José-2" and (models / "José-2.safetensors").read_bytes() == b"new"


@pytest.mark.slow
def test_a_person_model_trained_with_the_real_finetune(tmp_path, real_data, clip):
    """The page's training tab end to end with `hyperlips finetune` itself: a few minutes on one real clip."""
    app = App(quick_settings(tmp_path / "data")).start()  # the real finetune command
    try:
        client = Client(app.url)
        footage = client.upload_file(real_data / "retalking" / "face2.mp4")  # 5 s, its own speech
        job = client.submit(kind="finetune", video=footage["id"], name="face2", minutes=3)
        done, seen = client.wait(job["id"], timeout=1500, every=1.0)
        log = client.request("GET", f"/api/jobs/{job['id']}/log")[2].decode(errors="replace")[-3000:]
        assert done["state"] == "done", f"{done['message']}\n{log}"
        assert "preprocess" in {s["stage"] for s in seen}
        trained = [s for s in seen if s["state"] == "running" and s["progress"].get("step")]
        assert trained and trained[-1]["progress"]["preview"], seen[-3:]
        status, _, png = client.request("GET", f"/api/jobs/{job['id']}/preview")
        assert status == 200 and png.startswith(b"\x89PNG")
        assert "person:face2" in [m["id"] for m in client.json("GET", "/api/models")[1]["models"]]
        photo = client.upload_file(clip["photo"])
        speech = client.upload_file(clip["speech"])
        synced = client.submit(video=photo["id"], audio=speech["id"], model="person:face2")
        assert client.wait(synced["id"], timeout=600)[0]["state"] == "done"
    finally:
        app.stop()


def test_a_model_file_named_in_capitals_is_listed(tmp_path):
    """A colleague's copy named Anna.SAFETENSORS loads as any other (the loader reads its content) but was left out of
    the server's models without a word: the suffix is read in any case."""
    from hyperlips.serve.catalog import person_models

    for name in ("Anna.SAFETENSORS", "bob.safetensors", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [m.id for m in person_models(tmp_path)] == ["person:Anna", "person:bob"]
    # beside one of the same name, the .safetensors in lower case wins, whatever the order of their bytes
    for name in ("Anna.safetensors", "bob.PTH", "carl.PTH", "carl.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    assert {m.id: m.checkpoint.name for m in person_models(tmp_path)} == {
        "person:Anna": "Anna.safetensors", "person:bob": "bob.safetensors", "person:carl": "carl.safetensors"}
    # and so for the HR decoders beside them (the last in that order won: a stale .pth, a colleague's capitals)
    for name in ("Anna.hr256.SAFETENSORS", "Anna.hr256.safetensors", "Anna.hr512.safetensors", "Anna.hr512.pth"):
        (tmp_path / name).write_bytes(b"x")
    anna = next(m for m in person_models(tmp_path) if m.id == "person:Anna")
    assert {size: path.name for size, path in anna.hr.items()} == {256: "Anna.hr256.safetensors",
                                                                   512: "Anna.hr512.safetensors"}
    import unicodedata

    for name in ("Élodie Dupont.safetensors", unicodedata.normalize("NFD", "José.safetensors"), "会議.safetensors",
                 "trailing .safetensors", "_hidden.safetensors"):
        (tmp_path / name).write_bytes(b"x")  # names finetune takes are listed (they were left out, said in the log)
    ids = {m.id for m in person_models(tmp_path)}
    assert {"person:Élodie Dupont", "person:José", "person:会議"} <= ids, ids  # (the composed form, as typed)
    assert not {"person:trailing ", "person:_hidden"} & ids
    # a second José in the other form is one model listed twice alike: the first kept, the other said; an id asked
    # in either form finds it, its HR decoder in either form pairs with it
    for name in ("José.safetensors", unicodedata.normalize("NFD", "José.hr256.safetensors")):
        (tmp_path / name).write_bytes(b"x")
    josés = [m for m in person_models(tmp_path) if unicodedata.normalize("NFC", m.id) == "person:José"]
    assert len(josés) == 1 and 256 in josés[0].hr, josés
    from types import SimpleNamespace

    from hyperlips.serve.catalog import find_model

    found = find_model(SimpleNamespace(models=tmp_path), unicodedata.normalize("NFD", "person:José"))
    assert found is not None and found.id == "person:José"
