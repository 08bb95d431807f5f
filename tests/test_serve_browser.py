"""The page of ``hyperlips serve`` in a real browser: headless Chromium (Debian's package) driven by Playwright;
also ``sync``'s default output played by Chromium at odd and even sizes.

Skipped, with the reason, where Chromium or the playwright package is missing (``bash scripts/test.sh`` installs
both when it can). Playwright never downloads a browser here: it is pointed at the system's chromium.
Set ``HYPERLIPS_SCREENSHOT=PATH`` to keep the screenshot of the finished page (docs/img/serve.png is one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers import write_wav
from serve_kit import faceless_photo, fake_finetune, quick_settings

from hyperlips.serve.server import App

CHROMIUM = os.environ.get("HYPERLIPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
JOB_TIMEOUT_MS = 900_000


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the playwright Python package (bash scripts/test.sh installs it, or pip install playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install -y chromium; bash scripts/test.sh installs it "
                    f"where apt-get works; or set HYPERLIPS_CHROMIUM)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900})
        yield context
        context.close()


@pytest.fixture
def open_page(browser, tmp_path):
    """Start a server and open its page; afterwards check the page fetched nothing from elsewhere and had no errors."""
    apps, pages, outside, errors = [], [], [], []

    def go(**settings):
        app = App(quick_settings(tmp_path / "data", **settings)).start()
        page = browser.new_page()
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((app.url, "data:", "blob:")) else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(app.url + "/")
        page.wait_for_function("() => document.querySelectorAll('#sync-model option').length > 0")
        apps.append(app)
        pages.append(page)
        return app, page

    yield go
    for page in pages:
        page.close()
    for app in apps:
        app.stop()
    assert not outside, f"the page fetched from elsewhere: {outside}"
    assert not [e for e in errors if not e.startswith("Failed to load resource")], errors  # 4xx answers are expected


def _pick(page, selector: str, path: Path, status: str, timeout: float = 600_000) -> str:
    page.set_input_files(selector, str(path))
    page.wait_for_selector(f"{status}.ok, {status}.bad", timeout=timeout)
    return page.inner_text(status)


def test_lipsync_a_real_clip_in_the_page_and_play_the_result(open_page, real_data, tmp_path):
    app, page = open_page(examples=True)
    page.wait_for_function("() => document.querySelectorAll('#sync-video-example option').length > 1")  # the example
    video, audio = real_data / "retalking" / "face1.mp4", real_data / "retalking" / "audio1.wav"
    assert _pick(page, "#sync-video-file", video, "#sync-video-status").startswith("✓ face1.mp4 · 700×700")
    assert _pick(page, "#sync-audio-file", audio, "#sync-audio-status").startswith("✓ audio1.wav")
    assert page.input_value("#sync-model") == "starter"  # the shipped starter is the default
    page.click("#sync-start")

    stages, widths = set(), []
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while not page.is_visible("#sync-result"):
        if page.is_visible("#sync-error"):
            pytest.fail(f"the job failed: {page.inner_text('#sync-error')}")
        text = page.inner_text("#sync-stage")
        stages.add(text.split(":")[0].split(" ·")[0])
        widths.append(float(page.eval_on_selector("#sync-bar", "b => parseFloat(b.style.width) || 0")))
        page.wait_for_timeout(250)
        assert time.monotonic() < deadline, "no result in time"
    assert "Generating the mouth" in stages, stages  # the long stage is seen while it runs
    assert widths == sorted(widths) and 0 < max(widths)
    # every stage stays on record with its time, the short ones too (the face search can end between two polls)
    times = page.inner_text("#sync-times")
    assert re.fullmatch(r"Loading the model [\d.]+ s · Finding the face [\d.]+ s · Generating the mouth .+ s", times), times

    playing = page.evaluate("""async () => {
        const v = document.getElementById('sync-output');
        const late = (ms) => new Promise((_, no) => setTimeout(() => no(new Error(`nothing after ${ms} ms`)), ms));
        v.muted = true;
        try { await Promise.race([v.play(), late(60000)]); } catch (e) { return {failed: String(e)}; }
        const t0 = performance.now();
        while (v.currentTime < 1.0 && performance.now() - t0 < 60000) await new Promise(r => setTimeout(r, 100));
        const facts = {time: v.currentTime, width: v.videoWidth, height: v.videoHeight, duration: v.duration,
                       error: v.error && v.error.code, ready: v.readyState, paused: v.paused, src: v.currentSrc};
        v.pause();
        return facts;
    }""")
    assert "failed" not in playing and playing["error"] is None, playing
    assert playing["time"] >= 1.0 and not playing["paused"] and "/result" in playing["src"], playing
    assert (playing["width"], playing["height"]) == (700, 700)
    assert abs(playing["duration"] - 5.0) < 0.15, playing  # as long as the speech (5.0 s)
    href = page.get_attribute("#sync-download", "href")
    r = page.request.get(app.url + href)
    assert r.status == 200 and "face1_hyperlips.mp4" in r.headers["content-disposition"]

    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)


def test_pick_the_built_in_example(open_page, tmp_path):
    """The example needs no upload: a public-domain photo and synthesised speech (the docs' screenshot)."""
    _, page = open_page(examples=True)
    page.wait_for_function("() => document.querySelectorAll('#sync-audio-example option').length > 1")
    page.select_option("#sync-video-example", label=page.inner_text("#sync-video-example option:nth-child(2)"))
    page.select_option("#sync-audio-example", label=page.inner_text("#sync-audio-example option:nth-child(2)"))
    assert page.inner_text("#sync-video-status").startswith("✓ demo_face.png · photo")
    assert page.inner_text("#sync-audio-status").startswith("✓ demo_speech.wav")
    # the choice is read whole at a desktop's width ("demo_face.png · photo, 51" before); the training tab offers
    # no list of examples where none is footage to train on (it offered one holding only "—")
    fits = page.evaluate("""() => ['sync-video-example', 'sync-audio-example'].map((id) => {
        const s = document.getElementById(id), c = document.createElement('canvas').getContext('2d');
        c.font = getComputedStyle(s).font;
        return [s.selectedOptions[0].text, c.measureText(s.selectedOptions[0].text).width + 40, s.clientWidth]; })""")
    assert all(need <= width for _, need, width in fits), fits
    hidden = "s => s.closest('label').hidden"
    assert page.eval_on_selector("#train-video-example", hidden)
    assert not page.eval_on_selector("#sync-video-example", hidden)
    page.click("#sync-start")
    page.wait_for_selector("#sync-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    page.evaluate("""async () => {
        const v = document.getElementById('sync-output');
        const late = (ms) => new Promise(r => setTimeout(r, ms));
        if (v.readyState < 1) await Promise.race([new Promise(r => v.addEventListener('loadedmetadata', r, {once: true})), late(30000)]);
        v.currentTime = 3.0;
        await Promise.race([new Promise(r => v.addEventListener('seeked', r, {once: true})), late(30000)]);
    }""")
    assert page.evaluate("() => document.getElementById('sync-output').currentTime") == 3.0
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("HYPERLIPS_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["HYPERLIPS_SCREENSHOT"])


def test_the_files_chosen_stay_over_a_reload_while_the_server_has_them(open_page, tmp_path):
    """A reload forgot the files chosen for the next job: uploads had to be made again."""
    from serve_kit import Client, face_photo

    app, page = open_page(examples=True)
    page.wait_for_function("() => document.querySelectorAll('#sync-audio-example option').length > 1")
    _pick(page, "#sync-video-file", face_photo(tmp_path / "face.png"), "#sync-video-status")
    page.select_option("#sync-audio-example", label=page.inner_text("#sync-audio-example option:nth-child(2)"))
    chosen = page.input_value("#sync-audio-example")
    page.reload()
    page.wait_for_selector("#sync-video-status.ok", timeout=60_000)
    assert page.inner_text("#sync-video-status").startswith("✓ face.png")
    assert page.inner_text("#sync-audio-status").startswith("✓ demo_speech.wav")
    assert page.input_value("#sync-audio-example") == chosen and page.is_enabled("#sync-start")

    photo = page.evaluate("() => localStorage.getItem('hyperlips.sync-video')")
    assert Client(app.url).json("DELETE", f"/api/files/{photo}")[0] == 200  # gone from the server
    page.reload()
    page.wait_for_selector("#sync-audio-status.ok", timeout=60_000)
    assert page.inner_text("#sync-video-status") == "" and page.is_disabled("#sync-start")
    assert page.evaluate("() => localStorage.getItem('hyperlips.sync-video')") is None


def test_a_network_blip_or_a_server_error_keeps_the_files_chosen_over_a_reload(open_page, tmp_path):
    """Any failed request for a file kept over a reload forgot it, as if the server had said it was gone: no answer
    (a network blip) or a server error keeps it, the picker says so, and it is asked for again until the server
    answers; only a 404 forgets it (test_the_files_chosen_stay_over_a_reload_while_the_server_has_them)."""
    from serve_kit import face_photo

    _, page = open_page()
    _pick(page, "#sync-video-file", face_photo(tmp_path / "face.png"), "#sync-video-status")
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "speech.wav", 0.6), "#sync-audio-status")
    kept = page.evaluate("() => [localStorage.getItem('hyperlips.sync-video'), localStorage.getItem('hyperlips.sync-audio')]")
    failed = []

    def blip(route):  # the face's first request finds no server, the speech's first a server in trouble
        if route.request.url in failed:
            route.continue_()
        elif kept[0] in route.request.url:
            failed.append(route.request.url)
            route.abort("connectionrefused")
        else:
            failed.append(route.request.url)
            route.fulfill(status=503, content_type="application/json", body=json.dumps({"error": "the disk is busy"}))

    page.route("**/api/files/*", blip)
    page.reload()
    page.wait_for_function("() => document.querySelectorAll('.file-status.warn').length === 2", timeout=10_000)
    face, speech = page.inner_text("#sync-video-status"), page.inner_text("#sync-audio-status")
    assert face == ("The face chosen before could not be fetched: the server cannot be reached. It stays chosen, "
                    "and is fetched again when the server answers."), face
    assert speech.startswith("The speech chosen before could not be fetched: the disk is busy. It stays"), speech
    assert page.inner_text("#sync-missing") == "Waiting for the server to answer for the file chosen before."
    assert page.evaluate("() => [localStorage.getItem('hyperlips.sync-video'), "
                         "localStorage.getItem('hyperlips.sync-audio')]") == kept
    page.wait_for_selector("#sync-start:enabled", timeout=10_000)  # both asked for again, and there
    assert page.inner_text("#sync-video-status").startswith("✓ face.png")
    assert page.inner_text("#sync-audio-status").startswith("✓ speech.wav")
    assert len(failed) == 2
    page.unroute("**/api/files/*")


def test_a_file_chosen_while_the_kept_one_is_asked_for_wins(open_page, tmp_path):
    """After a reload, the page looked for a choice made only before asking the server for the file kept: a file
    chosen while it asked was replaced by the kept one when the answer came (and a 404 forgot the newer one)."""
    from serve_kit import Client, face_photo

    app, page = open_page()
    _pick(page, "#sync-video-file", face_photo(tmp_path / "old.png"), "#sync-video-status")
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "old.wav", 0.6), "#sync-audio-status")
    old_audio = page.evaluate("() => localStorage.getItem('hyperlips.sync-audio')")
    # the requests for the files kept are held until the test lets them go (the face's first, then the speech's)
    page.add_init_script("""{ const real = window.fetch; window.held = [];
        window.fetch = (url, opts) => {
            if (String(url).startsWith('/api/files/'))
                return new Promise((ok) => window.held.push(() => real(url, opts).then(ok)));
            return real(url, opts); }; }""")
    page.reload()
    page.wait_for_function("() => window.held.length === 1")
    shown = _pick(page, "#sync-video-file", face_photo(tmp_path / "new.png"), "#sync-video-status")
    assert shown.startswith("✓ new.png"), shown
    new_video = page.evaluate("() => localStorage.getItem('hyperlips.sync-video')")
    page.evaluate("() => window.held[0]()")  # the kept face's answer comes now
    page.wait_for_function("() => window.held.length === 2")  # and the speech is asked for
    page.wait_for_timeout(500)
    assert page.inner_text("#sync-video-status").startswith("✓ new.png")
    assert page.evaluate("() => localStorage.getItem('hyperlips.sync-video')") == new_video
    # the kept speech, deleted meanwhile: its 404 forgets it, not the speech chosen since
    assert _pick(page, "#sync-audio-file", write_wav(tmp_path / "new.wav", 0.8), "#sync-audio-status").startswith(
        "✓ new.wav")
    new_audio = page.evaluate("() => localStorage.getItem('hyperlips.sync-audio')")
    assert Client(app.url).json("DELETE", f"/api/files/{old_audio}")[0] == 200
    page.evaluate("() => window.held[1]()")
    page.wait_for_timeout(500)
    assert page.inner_text("#sync-audio-status").startswith("✓ new.wav")
    assert page.evaluate("() => localStorage.getItem('hyperlips.sync-audio')") == new_audio
    assert page.is_enabled("#sync-start")


def test_phoneme_timings_chosen_while_the_kept_files_are_asked_for_win(open_page, tmp_path):
    """The timings kept over a reload were checked after the kept face and speech were asked for: timings chosen
    meanwhile, still being checked, lost their turn to the kept ones, which took their place."""
    from serve_kit import face_photo

    app, page = open_page()
    _pick(page, "#sync-video-file", face_photo(tmp_path / "face.png"), "#sync-video-status")
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "speech.wav", 0.6), "#sync-audio-status")
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("0.0 AA\n0.2 M\n")
    new.write_text("0.0 M\n0.1 AA\n0.3 B\n")
    assert _pick(page, "#sync-phonemes", old, "#sync-phonemes-status").startswith("✓ old.txt")
    # the kept files' requests and the timings' checks are held until the test lets them go
    page.add_init_script("""{ const real = window.fetch; window.held = []; window.checks = [];
        window.fetch = (url, opts) => {
            const to = String(url).startsWith('/api/files/') ? window.held
                     : String(url) === '/api/phonemes' ? window.checks : null;
            if (to) return new Promise((ok) => to.push(() => real(url, opts).then(ok)));
            return real(url, opts); }; }""")
    page.reload()
    page.wait_for_function("() => window.held.length === 1")
    page.set_input_files("#sync-phonemes", str(new))  # chosen while the kept face is asked for
    page.wait_for_function("() => window.checks.length === 1")
    page.evaluate("() => window.held[0]()")
    page.wait_for_function("() => window.held.length === 2")
    page.evaluate("() => window.held[1]()")
    page.wait_for_function("() => document.querySelector('#sync-audio-status').innerText.startsWith('✓')")
    page.wait_for_timeout(500)
    page.evaluate("() => window.checks.forEach((go) => go())")
    page.wait_for_selector("#sync-phonemes-status.ok", timeout=30_000)
    page.wait_for_timeout(500)
    assert page.inner_text("#sync-phonemes-status").startswith("✓ new.txt"), page.inner_text("#sync-phonemes-status")
    assert "new.txt" in page.evaluate("() => localStorage.getItem('hyperlips.sync-phonemes')")


def test_phoneme_timings_picked_in_the_page_reach_the_job(open_page, tmp_path):
    """A phoneme file picked in the page goes with the job (its text, read by the server); a bad one shows why."""
    app, page = open_page(examples=True)
    page.wait_for_function("() => document.querySelectorAll('#sync-audio-example option').length > 1")
    page.select_option("#sync-video-example", label=page.inner_text("#sync-video-example option:nth-child(2)"))
    page.select_option("#sync-audio-example", label=page.inner_text("#sync-audio-example option:nth-child(2)"))
    # checked as it is chosen (it was only when the job was submitted), the reason in the field's words, the file
    # named; a refused file leaves the picker
    bad = tmp_path / "bad.txt"
    bad.write_text("0.2 B\n0.1 AA\n")
    shown = _pick(page, "#sync-phonemes", bad, "#sync-phonemes-status", 30_000)
    assert shown.startswith("Phoneme timings: bad.txt, line 2 starts at 0.1 s, before line 1"), shown
    assert page.eval_on_selector("#sync-phonemes", "i => i.files.length") == 0
    picture = tmp_path / "photo.jpg"
    picture.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x14" * 20)
    shown = _pick(page, "#sync-phonemes", picture, "#sync-phonemes-status")
    assert shown.startswith("Phoneme timings: photo.jpg: not a text file"), shown
    praat = tmp_path / "praat.txt"  # UTF-16 with its mark, as Praat writes text that is not ASCII
    praat.write_bytes("0.0 M\n0.2 AA1\n".encode("utf-16"))
    assert _pick(page, "#sync-phonemes", praat, "#sync-phonemes-status").startswith("✓ praat.txt · 2 phonemes")
    page.click("#sync-phonemes-clear")  # the choice can be undone
    assert page.inner_text("#sync-phonemes-status") == "" and not page.is_visible("#sync-phonemes-clear")
    assert page.evaluate("() => localStorage.getItem('hyperlips.sync-phonemes')") is None
    good = tmp_path / "speech.txt"
    good.write_text("# an aligner's phones\n0.0 0.2 M\n0.2 0.45 AA1\n0.45 0.6 P\n")
    assert _pick(page, "#sync-phonemes", good, "#sync-phonemes-status").startswith("✓ speech.txt · 3 phonemes")
    page.reload()  # chosen still, as the face and the speech are
    page.wait_for_selector("#sync-phonemes-status.ok", timeout=30_000)
    assert page.inner_text("#sync-phonemes-status").startswith("✓ speech.txt · 3 phonemes")
    page.wait_for_selector("#sync-start:enabled", timeout=30_000)
    page.click("#sync-start")
    page.wait_for_selector("#sync-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    r = page.request.get(app.url + "/api/jobs?kind=sync")
    jobs = r.json()["jobs"]
    assert len(jobs) == 1 and jobs[0]["params"]["phonemes"] == 3  # the bad file made no job


def _phonemes_say(page, words: str, timeout: float = 10_000) -> str:
    page.wait_for_function("(w) => document.getElementById('sync-phonemes-status').textContent.includes(w)", arg=words,
                           timeout=timeout)
    return page.inner_text("#sync-phonemes-status")


def test_phoneme_timings_are_checked_again_when_the_speech_changes(open_page, tmp_path):
    """The timings were checked against the speech chosen when the phoneme file was picked: a speech chosen after it
    left them as they were read against the one before (a last phoneme without an end lasts to the speech's end)."""
    _, page = open_page()
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "short.wav", 0.6), "#sync-audio-status")
    marks = tmp_path / "marks.txt"
    marks.write_text("0.0 M\n0.3 AA1\n")
    shown = _pick(page, "#sync-phonemes", marks, "#sync-phonemes-status")
    assert shown.startswith("✓ marks.txt · 2 phonemes, 0.00 to 0.60 s"), shown
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "long.wav", 1.5), "#sync-audio-status")
    assert _phonemes_say(page, "to 1.50 s").startswith("✓ marks.txt · 2 phonemes, 0.00 to 1.50 s")


def test_a_network_blip_keeps_the_phoneme_timings_chosen(open_page, tmp_path):
    """One failed request (the server briefly unreachable) dropped the phoneme timings chosen, kept over a reload,
    as if the server had refused them: they stay chosen, the page says they could not be checked, and checks them
    again once the server answers."""
    _, page = open_page()
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "speech.wav", 0.6), "#sync-audio-status")
    marks = tmp_path / "marks.txt"
    marks.write_text("0.0 0.2 M\n0.2 0.45 AA1\n")
    assert _pick(page, "#sync-phonemes", marks, "#sync-phonemes-status").startswith("✓ marks.txt · 2 phonemes")
    failed = []

    def blip(route):  # the first check after the reload finds no server; the next ones go through
        if failed:
            route.continue_()
        else:
            failed.append(route.request.url)
            route.abort("connectionrefused")

    page.route("**/api/phonemes", blip)
    page.reload()
    page.wait_for_selector("#sync-phonemes-status.warn, #sync-phonemes-status.bad", timeout=10_000)
    shown = page.inner_text("#sync-phonemes-status")
    assert failed and "could not be checked" in shown and "the server cannot be reached" in shown, shown
    assert page.eval_on_selector("#sync-phonemes-status", "e => e.className") == "file-status warn"
    assert json.loads(page.evaluate("() => localStorage.getItem('hyperlips.sync-phonemes')"))["name"] == "marks.txt"
    assert page.is_visible("#sync-phonemes-clear")
    assert _phonemes_say(page, "✓").startswith("✓ marks.txt · 2 phonemes")  # checked again on its own
    page.unroute("**/api/phonemes")


def test_a_late_answer_for_an_older_phoneme_choice_is_dropped(open_page, tmp_path):
    """Two phoneme files picked one after the other: the first, read last (a large file, a slow disk), took the
    second's place; a check of the timings against the speech chosen before, answered late, overwrote the one
    against the speech chosen since."""
    _, page = open_page()
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "short.wav", 0.6), "#sync-audio-status")
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("0.0 0.2 M\n0.2 0.45 AA1\n")
    second.write_text("0.0 0.1 M\n0.1 0.2 AA1\n0.2 0.3 P\n")
    page.evaluate("""() => { const read = fileText;  // the first file is read slowly
        window.fileText = async (f) => {
            if (f.name === 'first.txt') await new Promise((r) => setTimeout(r, 1500));
            return read(f); }; }""")
    page.set_input_files("#sync-phonemes", str(first))
    page.set_input_files("#sync-phonemes", str(second))
    assert _phonemes_say(page, "✓").startswith("✓ second.txt · 3 phonemes")
    page.wait_for_timeout(2000)  # the first file has been read by now
    assert page.inner_text("#sync-phonemes-status").startswith("✓ second.txt · 3 phonemes")
    assert json.loads(page.evaluate("() => localStorage.getItem('hyperlips.sync-phonemes')"))["name"] == "second.txt"

    # the check against the 0.6 s speech is held until the speech has been changed and its check answered
    marks = tmp_path / "marks.txt"
    marks.write_text("0.0 M\n0.3 AA1\n")
    page.evaluate("""() => { const real = window.fetch; window.held = [];
        window.fetch = (url, opts) => {
            if (url === '/api/phonemes' && window.held.length === 0)
                return new Promise((ok) => window.held.push(() => real(url, opts).then(ok)));
            return real(url, opts); }; }""")
    page.set_input_files("#sync-phonemes", str(marks))
    page.wait_for_function("() => window.held.length === 1")
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "long.wav", 1.5), "#sync-audio-status")
    assert _phonemes_say(page, "✓").startswith("✓ marks.txt · 2 phonemes, 0.00 to 1.50 s")
    page.evaluate("() => window.held[0]()")  # the answer for the 0.6 s speech comes now
    page.wait_for_timeout(1000)
    assert page.inner_text("#sync-phonemes-status").startswith("✓ marks.txt · 2 phonemes, 0.00 to 1.50 s")


def test_a_phoneme_file_too_large_to_send_is_refused_in_words(open_page, tmp_path):
    """A phoneme file of about 1 MB passed the page's size check, but its text sent as JSON (each line break
    written as two characters) was over the server's 1 MB limit: the server's 413 in the API's words ("send a JSON
    body of at most 1 MB with a Content-Length"). The page counts the text as it is sent, and says so."""
    _, page = open_page()
    lines = "".join(f"{k * 0.01:.2f} {k * 0.01 + 0.01:.2f} {'M' if k % 2 else 'AA1'}\n" for k in range(60_000))
    big = tmp_path / "big.txt"
    big.write_text(lines[: 1_000_000 - 100] + "\n")
    assert len(json.dumps(big.read_text())) > 1 << 20 > big.stat().st_size
    shown = _pick(page, "#sync-phonemes", big, "#sync-phonemes-status", 30_000)
    assert shown.startswith("Phoneme timings: big.txt is too large"), shown
    assert "JSON" not in shown and "Content-Length" not in shown and "just over 1 MB as sent" in shown, shown
    assert page.evaluate("() => localStorage.getItem('hyperlips.sync-phonemes')") is None
    # one that fits as sent is taken: the page's limit is the server's
    fits = tmp_path / "fits.txt"
    fits.write_text(lines[:900_000].rsplit("\n", 1)[0] + "\n")
    assert _pick(page, "#sync-phonemes", fits, "#sync-phonemes-status", 60_000).startswith("✓ fits.txt ·")
    # a server (or a proxy before it) that takes less: its refusal in the same words
    page.route("**/api/phonemes", lambda route: route.fulfill(
        status=413, content_type="application/json",
        body=json.dumps({"error": "send a JSON body of at most 1 MB with a Content-Length"})))
    small = tmp_path / "small.txt"
    small.write_text("0.0 0.2 M\n")
    shown = _pick(page, "#sync-phonemes", small, "#sync-phonemes-status")
    assert shown.startswith("Phoneme timings: small.txt is too large to send: this server takes at most 1 MB"), shown
    page.unroute("**/api/phonemes")


def test_bad_inputs_show_the_reason_and_jobs_can_be_cancelled(open_page, tmp_path):
    _, page = open_page()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    reason = _pick(page, "#sync-video-file", notes, "#sync-video-status")
    assert reason.startswith("notes.txt: not a file type this server takes; send videos")
    junk = tmp_path / "clip.mp4"
    junk.write_bytes(b"not a video\n" * 50)
    reason = _pick(page, "#sync-video-file", junk, "#sync-video-status")
    assert reason.startswith("cannot open clip.mp4 (unreadable or corrupt media file")
    assert page.is_disabled("#sync-start")
    # every refusal leaves the picker: a file the server takes but that cannot be the face stayed in it
    speech = write_wav(tmp_path / "speech.wav", 0.6)
    assert "speech.wav" in _pick(page, "#sync-video-file", speech, "#sync-video-status")
    assert page.eval_on_selector("#sync-video-status", "e => e.className") == "file-status bad"
    assert page.eval_on_selector("#sync-video-file", "i => i.files.length") == 0

    _pick(page, "#sync-video-file", faceless_photo(tmp_path / "wall.png"), "#sync-video-status")
    _pick(page, "#sync-audio-file", speech, "#sync-audio-status")
    page.click("#sync-start")
    page.wait_for_selector("#sync-error:not([hidden])", timeout=JOB_TIMEOUT_MS)
    assert "wall.png" in page.inner_text("#sync-error") and "face" in page.inner_text("#sync-error")

    # the reason in the page's words: the page offered "2nd from the left", not the command line's --face 1
    from serve_kit import face_photo

    _pick(page, "#sync-video-file", face_photo(tmp_path / "face.png"), "#sync-video-status")
    page.select_option("#sync-face", "1")
    page.click("#sync-start")
    page.wait_for_function("() => document.getElementById('sync-error').textContent.includes('face.png')",
                           timeout=JOB_TIMEOUT_MS)
    shown = page.inner_text("#sync-error")
    assert shown.startswith("Face to follow “2nd from the left”: face.png shows 1 face"), shown
    assert shown.endswith("so choose “the largest” or “1st from the left”") and "--face" not in shown, shown
    page.select_option("#sync-face", "")

    _pick(page, "#sync-audio-file", write_wav(tmp_path / "long.wav", 40.0), "#sync-audio-status")
    page.click("#sync-start")
    page.click("#sync-cancel")
    page.wait_for_function("() => document.getElementById('sync-error').textContent === 'Cancelled.'", timeout=300_000)
    assert not page.is_visible("#sync-cancel") and page.is_enabled("#sync-start")
    page.wait_for_timeout(300)  # (an announcement comes 50 ms late) said by the alert alone: it was heard twice
    assert "Cancelled" not in page.text_content("#announce")


def test_a_double_click_starts_one_job_and_the_file_chosen_last_is_the_one_used(open_page, tmp_path, browser):
    """A double-click on Lip-sync queued two jobs (the button waited for the server's answer to turn off); the page
    followed one, and its Cancel left the other running. A file chosen while another was still uploading (a slow
    network) was replaced by that one when it arrived: the picker showed the second, the job used the first."""
    import cv2
    import numpy as np

    from serve_kit import face_photo

    app, page = open_page()
    # a greyed-out button says what it waits for (beside it, and to a screen reader: it gave no reason)
    page.wait_for_function("() => document.getElementById('sync-missing').textContent === "
                           "'Choose a face (video or photo) and the speech to start.'", timeout=30_000)
    assert page.get_attribute("#sync-start", "aria-describedby") == "sync-missing"
    noise = tmp_path / "big.png"  # about 3 MB: seconds at the upload speed set below
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8))
    cdp = browser.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": 500_000})
    page.set_input_files("#sync-video-file", str(noise))
    page.wait_for_function("() => document.getElementById('sync-video-status').textContent.includes('%')")
    _pick(page, "#sync-video-file", face_photo(tmp_path / "face.png"), "#sync-video-status")
    time.sleep(8.0)  # the first upload would have arrived by now
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": -1})
    assert page.inner_text("#sync-video-status").startswith("✓ face.png"), page.inner_text("#sync-video-status")

    assert page.inner_text("#sync-missing") == "Choose the speech to start."
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "speech.wav", 0.6), "#sync-audio-status")
    assert page.inner_text("#sync-missing") == ""
    page.dblclick("#sync-start")
    page.wait_for_selector("#sync-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    import urllib.request

    with urllib.request.urlopen(app.url + "/api/jobs") as r:
        jobs = json.loads(r.read())["jobs"]
    assert len(jobs) == 1, jobs
    assert app.store.get_file(jobs[0]["params"]["video"])["name"] == "face.png"


def test_a_job_deleted_elsewhere_leaves_the_page_and_a_finished_one_stays_after_a_reload(open_page, tmp_path):
    """The job the page followed, deleted from another tab or the API, froze its progress and left Cancel doing
    nothing; a finished job's result was gone after a reload (the page forgot finished jobs)."""
    from serve_kit import Client, face_photo

    app, page = open_page()
    client = Client(app.url)
    _pick(page, "#sync-video-file", face_photo(tmp_path / "face.png"), "#sync-video-status")
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "long.wav", 40.0), "#sync-audio-status")
    page.click("#sync-start")
    page.wait_for_selector("#sync-cancel:not([hidden])", timeout=60_000)
    job = page.evaluate("() => localStorage.getItem('hyperlips.sync')")
    assert client.json("DELETE", f"/api/jobs/{job}")[0] == 200  # elsewhere: the API
    page.wait_for_function("() => document.getElementById('sync-error').textContent.includes('no longer exists')",
                           timeout=60_000)
    assert not page.is_visible("#sync-cancel") and not page.is_visible("#sync-job") and page.is_enabled("#sync-start")

    _pick(page, "#sync-audio-file", write_wav(tmp_path / "short.wav", 0.6), "#sync-audio-status")
    page.click("#sync-start")
    page.wait_for_selector("#sync-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    page.reload()
    page.wait_for_selector("#sync-result:not([hidden])", timeout=60_000)  # the result is still there
    assert page.inner_text("#sync-error") == ""
    # the finished job deleted elsewhere: the result went on showing, its Download a dead link, without a word
    done = page.evaluate("() => localStorage.getItem('hyperlips.sync')")
    assert client.json("DELETE", f"/api/jobs/{done}")[0] == 200
    page.wait_for_function("() => document.getElementById('sync-error').textContent.includes('no longer')",
                           timeout=60_000)
    assert not page.is_visible("#sync-result")
    # an earlier job deleted while a later one is shown: the later one stays (it was hidden and forgotten)
    page.click("#sync-start")
    page.wait_for_selector("#sync-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    first = page.evaluate("() => localStorage.getItem('hyperlips.sync')")
    page.click("#sync-start")
    page.wait_for_function(f"() => localStorage.getItem('hyperlips.sync') !== '{first}'", timeout=60_000)
    assert client.json("DELETE", f"/api/jobs/{first}")[0] == 200  # before the page checks the earlier one again
    page.wait_for_selector("#sync-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    second = page.evaluate("() => localStorage.getItem('hyperlips.sync')")
    time.sleep(11)  # the page has checked the earlier job (gone) and its own finished one
    assert page.is_visible("#sync-result") and page.inner_text("#sync-error") == ""
    assert page.evaluate("() => localStorage.getItem('hyperlips.sync')") == second


def test_a_file_without_a_suffix_is_sent_and_a_jobs_warnings_are_shown(open_page, tmp_path):
    """The page refused a file named without a suffix (some phones' share sheets) that the server takes, and never
    showed a finished job's warnings (silent speech: the mouth has nothing to follow)."""
    from serve_kit import face_photo

    _, page = open_page()
    plain = tmp_path / "face"
    face_photo(tmp_path / "face.png").rename(plain)
    status = _pick(page, "#sync-video-file", plain, "#sync-video-status")
    assert "not a file type" not in status
    silent = write_wav(tmp_path / "quiet.wav", 0.6, freq=0.0)
    _pick(page, "#sync-audio-file", silent, "#sync-audio-status")
    page.click("#sync-start")
    page.wait_for_selector("#sync-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#sync-warnings-box:not([hidden])", timeout=10_000)
    assert "silent" in page.inner_text("#sync-warnings"), page.inner_text("#sync-warnings")
    page.click("#tab-jobs")
    page.wait_for_function("() => document.getElementById('jobs-body').textContent.includes('done, with a warning')",
                           timeout=30_000)


def test_the_page_works_from_the_keyboard_and_says_what_happens(open_page, tmp_path):
    """For keyboard and screen-reader users: the tabs moved by the arrow keys with one Tab stop; focus fell to the
    page when the pressed button was disabled; a finished job was never announced while the progress text was read
    out at every redraw; the Jobs table, rebuilt every 3 s, threw the focus back to its first row."""
    from serve_kit import face_photo

    _, page = open_page()
    assert page.evaluate("() => [...document.querySelectorAll('[role=tab]')].map((t) => t.tabIndex)") == [0, -1, -1]
    page.focus("#tab-sync")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("() => document.activeElement.id") == "tab-train" and page.is_visible("#panel-train")
    page.keyboard.press("End")
    assert page.evaluate("() => document.activeElement.id") == "tab-jobs"
    page.keyboard.press("ArrowRight")  # round to the first
    assert page.evaluate("() => document.activeElement.id") == "tab-sync" and page.is_visible("#panel-sync")
    names = page.evaluate("() => [...document.querySelectorAll('[role=progressbar]')].map((e) => e.ariaLabel)")
    assert names == ["Lip-sync progress", "Training progress"]
    assert page.get_attribute("#sync-stage", "aria-live") is None  # the numbers are not read out at every redraw

    _pick(page, "#sync-video-file", face_photo(tmp_path / "face.png"), "#sync-video-status")
    _pick(page, "#sync-audio-file", write_wav(tmp_path / "short.wav", 0.6), "#sync-audio-status")
    page.focus("#sync-start")
    page.keyboard.press("Enter")
    page.wait_for_selector("#sync-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    page.wait_for_function("() => document.getElementById('announce').textContent.includes('Lip-sync finished')",
                           timeout=10_000)
    assert page.evaluate("() => document.activeElement.id") in ("sync-download", "sync-cancel", "sync-start")
    assert page.evaluate("() => document.activeElement !== document.body")

    page.click("#tab-jobs")
    page.wait_for_selector("#jobs-body button")
    page.focus("#jobs-body button")
    label = page.evaluate("() => document.activeElement.getAttribute('aria-label')")
    assert label.startswith("delete: lip-sync face.png + short.wav"), label
    time.sleep(3.5)  # a refresh of the table
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == label


def test_the_page_speaks_to_its_user(open_page):
    """A video editor's words: no "step 0 · 0%" while the footage is prepared, and a server that cannot be reached
    said in a sentence, without the command that starts it in backticks."""
    _, page = open_page()
    line = page.evaluate("""() => stageLine({state: 'running', fraction: 0.0, progress: {stage: 'preprocess',
                                             step: 0, eta_s: 3.0}})""")
    assert line == "Preparing the footage…", line
    said = page.evaluate("""async () => {
        const real = window.fetch;
        window.fetch = () => Promise.reject(new TypeError('Failed to fetch'));  // what a stopped server gives
        try { await api('GET', '/api/health'); return null; } catch (e) { return e.message; }
        finally { window.fetch = real; } }""")
    assert said == "The server cannot be reached. Check that hyperlips is still running, then try again.", said


def test_train_a_person_model_in_the_page(open_page, real_data, tmp_path):
    app, page = open_page(finetune_command=fake_finetune(tmp_path / "fake"))
    page.click("#tab-train")
    assert _pick(page, "#train-video-file", real_data / "retalking" / "face1.mp4", "#train-video-status").startswith("✓")
    page.fill("#train-name", "anna")
    page.fill("#train-minutes", "2")
    page.select_option("#train-face", "1")  # the person to learn, where the footage shows several
    page.click("#train-start-button")
    page.wait_for_function("() => document.getElementById('train-preview').naturalWidth === 64", timeout=600_000)
    figures = page.inner_text("#train-val")  # in words, with which way is better: not the training's keys
    assert "Mouth difference from the real frames (lower is better)" in figures and "higher is better" in figures
    assert "val/" not in figures and "opening_err" not in figures, figures
    base = page.evaluate("() => valRows({'val/l1': 0.1, 'val/sync': 0.7}).map(([label]) => label).join(' | ')")
    assert "val/" not in base and base.count("lower is better") == 2, base  # a Base model's figures, in words too
    caption = page.inner_text("#train-preview-caption")  # lite.preview: the real frames above, generated below
    assert "Top row: the real footage" in caption and "Bottom row: the same frames with the mouth generated" in caption
    page.wait_for_selector("#train-done:not([hidden])", timeout=600_000)
    assert "anna" in page.inner_text("#train-done")
    job = page.evaluate("() => localStorage.getItem('hyperlips.train')")
    args = json.loads((app.settings.data / "jobs" / job / "work" / "args.json").read_text())
    assert args["argv"][-2:] == ["--face", "1"]
    # "from scratch" chosen for the next training stays chosen (the finished job, checked again every 10 s,
    # put the starter back each time)
    page.click("#tab-train")
    page.select_option("#train-start", "")
    time.sleep(11)
    assert page.eval_on_selector("#train-start", "e => e.value") == ""
    page.click("#tab-sync")
    page.wait_for_function("() => [...document.querySelectorAll('#sync-model option')].some(o => o.value === 'person:anna')")
    # the least budget is the server's (1 minute left 10 s to prepare the footage), and a training the budget left
    # too little time marks the field the reason is about
    assert page.get_attribute("#train-minutes", "min") == "2"
    assert "Preparing the footage" in page.inner_text("#train-minutes-hint")
    page.evaluate("""() => render('train', {id: 'x', kind: 'finetune', state: 'failed', progress: {}, message:
        '--minutes 2 leaves 20 s to train (preprocessing took 80 s, and 20 s are kept for the last validation and '
        + 'writing the model); give at least --minutes 2.2'})""")
    assert page.inner_text("#train-error").startswith("A time budget of 2 minutes leaves 20 s to train")
    assert page.get_attribute("#train-minutes", "aria-invalid") == "true"


@pytest.fixture
def file_server(tmp_path):
    """A plain HTTP server for ``tmp_path`` (Chromium plays media from http://, not from file:// pages)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda request, address: None  # (Chromium drops connections it has read enough of: the
    threading.Thread(target=server.serve_forever, daemon=True).start()  # plain server printed a broken pipe's header)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


PLAY = """async (src) => {
    const v = document.createElement('video');
    v.muted = true;
    document.body.appendChild(v);
    const late = (ms) => new Promise((_, no) => setTimeout(() => no(new Error(`nothing after ${ms} ms`)), ms));
    v.src = src;
    try { await Promise.race([v.play(), late(60000)]); } catch (e) { return {failed: String(e), error: v.error && v.error.code}; }
    const t0 = performance.now();
    while (!v.ended && v.currentTime < 0.4 && performance.now() - t0 < 60000) await new Promise(r => setTimeout(r, 50));
    const q = v.getVideoPlaybackQuality();
    return {time: v.currentTime, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
            frames: q.totalVideoFrames, error: v.error && v.error.code};
}"""


@pytest.mark.parametrize("size", [(331, 301), (330, 300)], ids=["odd", "even"])
def test_chromium_plays_the_default_output(browser, file_server, real_data, tmp_path, size):
    """``sync``'s default output (4:2:0 H.264 + AAC) plays in Chromium at odd and even input sizes."""
    from helpers import cut_audio

    from hyperlips.media.video import FrameReader

    from hyperlips.media.writer import VideoWriter
    from hyperlips.pipeline import LipSync

    w, h = size
    clip = tmp_path / "in.mp4"
    with FrameReader(real_data / "retalking" / "face3.mp4") as r, VideoWriter(clip, w, h, 25, pix_fmt="yuv444p") as out:
        y, x = (r.height - h) // 2, (r.width - w) // 2
        for f in r.iter_range(0, 8):
            out.write(f.image[y : y + h, x : x + w].copy())
    speech = cut_audio(real_data / "retalking" / "audio1.wav", tmp_path / "a.wav", 1.2)
    LipSync(untrained=True, progress=False, device="cpu").sync(clip, speech, tmp_path / "out.mp4")
    page = browser.new_page()
    try:
        page.goto(file_server + "/")
        got = page.evaluate(PLAY, file_server + "/out.mp4")
    finally:
        page.close()
    assert "failed" not in got and got["error"] is None, got
    assert (got["width"], got["height"]) == (w + w % 2, h + h % 2), got
    assert abs(got["duration"] - 1.2) < 0.1 and got["time"] > 0 and got["frames"] > 0, got
