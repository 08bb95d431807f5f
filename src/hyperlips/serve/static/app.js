// The hyperlips page: uploads files, submits jobs to the API, follows their progress and shows the results.
// Plain browser JavaScript, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, models: [], examples: [],
  sync: { video: null, audio: null, phonemes: null, job: null, uploading: 0, starting: false },
  train: { video: null, job: null, uploading: 0, starting: false },
};
const POLL_MS = 600;
const DONE_POLL_MS = 10000;  // a finished job's result, checked now and then: deleted elsewhere, it goes

// ---------------------------------------------------------------- talking to the server
async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, opts);
  } catch (e) {
    // in the words of the page's user, who may never have seen the command that started it; ``status`` 0: no
    // answer at all, which may pass (an answer's status says whether the server refused the request)
    throw Object.assign(new Error("The server cannot be reached. Check that hyperlips is still running, then try " +
                                  "again."), {status: 0});
  }
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) throw Object.assign(new Error((data && data.error) || `${r.status} ${r.statusText}`), {status: r.status});
  return data;
}

function sizeText(n) {
  // "500 MB", not "500.0 MB"; "2.5 MB" keeps its tenth
  return n >= 1048576 ? `${Number((n / 1048576).toFixed(1))} MB` : `${Math.round(n / 1024)} KB`;
}

// ``onStart(xhr)``: given the request once it is sent, so that a newer choice of file can abort it
function upload(file, onProgress, onStart = () => {}) {
  return new Promise((resolve, reject) => {
    const max = state.info ? state.info.limits.max_upload_bytes : Infinity;
    const dot = file.name.lastIndexOf(".");  // as the server reads it: a name without one (a phone's share sheet)
    const suffix = dot >= 0 ? file.name.slice(dot).toLowerCase() : "";  // is taken and read by its content
    if (state.info && suffix && !state.info.accepted_suffixes.includes(suffix)) {  // the server's words, first
      reject(new Error(`${file.name}: not a file type this server takes; send ${state.info.accepted_kinds}`));
      return;
    }
    if (file.size > max) {
      reject(new Error(`${file.name} is ${sizeText(file.size)}; this server takes files of at most ${sizeText(max)}`));
      return;
    }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/files?name=" + encodeURIComponent(file.name));
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 201 && data) resolve(data);
      else reject(new Error((data && data.error) || `the upload failed (${xhr.status})`));
    };
    xhr.onerror = () => reject(new Error("The upload failed: the server could not be reached."));
    xhr.onabort = () => reject(new Error("the upload was replaced by another file"));
    xhr.send(file);
    onStart(xhr);
  });
}

// ---------------------------------------------------------------- small view helpers
function show(el, on) { el.hidden = !on; }

// A failed job's reason is the command line's; the options it names read as the fields of this page call them.
function ordinal(n) {
  const tens = n % 100, ones = n % 10;
  return `${n}${tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][ones] || "th"}`;
}
function faceChoices(last) {
  return +last === 0 ? "so choose “the largest” or “1st from the left”"
                     : `so choose “the largest” or one of “1st” to “${ordinal(+last + 1)} from the left”`;
}
function pageWords(message, view = "sync") {
  const field = view === "train" ? "Person to learn" : "Face to follow";  // the form's own words for the choice
  return String(message || "")
    .replace(/(^|: )--face (\d+): /, (_, at, n) => `${at}${field} “${ordinal(+n + 1)} from the left”: `)
    .replace(/^face_index (\d+) asked for \(--face \d+\)/, (_, n) => `${field} “${ordinal(+n + 1)} from the left”`)
    .replace(/ \(--face-box X1,Y1,X2,Y2 in pixels\)/, "")
    .replace(/so the faces to choose from are 0\.\.(\d+), counted left to right/, (_, n) => faceChoices(n))
    .replace(/: use 0\.\.(\d+) \(counted left to right\)/, (_, n) => `: ${faceChoices(n)}`)
    .replace(/^--minutes ([\d.]+) leaves/, (_, m) => `A time budget of ${m} minute${+m === 1 ? "" : "s"} leaves`)
    .replace(/give at least --minutes ([\d.]+)/, (_, m) => `give it at least ${Math.ceil(+m)} minutes`)
    .replace(/^phonemes: .*/, (reason) => phonemeReason(reason, view === "sync" && state.sync.phonemes
                                                               ? state.sync.phonemes.name : null))
    .replace(/^name: /, "Model name: ")
    .replace(/^minutes: /, "Time budget (minutes): ");
}
// "phonemes: line 1: ..." in the field's words, the file named: "Phoneme timings: notes.txt, line 1: ..."
function phonemeReason(message, name) {
  const rest = String(message).replace(/^phonemes: /, "");
  if (!name) return `Phoneme timings: ${rest}`;
  return `Phoneme timings: ${name}${/^(line|interval|phoneme) \d/.test(rest) ? ", " : ": "}${rest}`;
}
function setError(id, text) { const el = $(id); el.textContent = text || ""; show(el, Boolean(text)); }
function fmtSeconds(s) {
  if (s == null || !isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  return s < 90 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}
function describeFile(f) {
  const parts = [];
  if (f.is_image) parts.push("photo");
  if (f.width) parts.push(`${f.width}×${f.height}`);
  const secs = f.video_seconds != null ? f.video_seconds : f.audio_seconds;
  if (secs != null) parts.push(`${Number(secs).toFixed(1)} s`);
  if (f.has_audio && !f.is_image && f.has_video) parts.push("with sound");
  return `${f.name} · ${parts.join(", ")}`;
}
function setBar(prefix, fraction) {
  const pct = Math.max(0, Math.min(100, Math.round(fraction * 100)));
  $(`${prefix}-bar`).style.width = `${pct}%`;
  $(`${prefix}-progress`).setAttribute("aria-valuenow", String(pct));
}

const STAGE_TEXT = {
  starting: "Starting the worker…",
  loading: "Loading the model…",
  faces: "Finding the face",
  "lip-sync": "Generating the mouth",
  preprocess: "Preparing the footage",
  train: "Training",
  lite: "Training",
  base: "Training",
  hr: "Training the HR decoder",
};
function stageLine(job) {
  const p = job.progress || {};
  if (job.state === "queued") {
    // the jobs running now count too: behind an hour of training it said "Waiting to start…" for that hour
    const ahead = (job.queue_position || 0) + (job.running_ahead || 0);
    return ahead ? `Waiting in the queue (${ahead} job${ahead > 1 ? "s" : ""} ahead)` : "Waiting to start…";
  }
  if (job.state !== "running") return "";
  if (p.stage === "preprocess") return `${STAGE_TEXT.preprocess}…`;  // no step yet ("step 0 · 0%" said nothing)
  let text = STAGE_TEXT[p.stage] || (p.stage ? p.stage.charAt(0).toUpperCase() + p.stage.slice(1) : "Working");
  if (p.total && p.stage !== "loading") text += `: frame ${p.done} of ${p.total}`;
  if (p.step != null) text += ` · step ${p.step}`;
  const pct = Math.round((job.fraction || 0) * 100);
  text += ` · ${pct}%`;
  if (p.eta_s != null && (p.eta_s > 0 || pct >= 100)) text += ` · about ${fmtSeconds(p.eta_s)} left`; // none before it is known
  return text;
}

// ---------------------------------------------------------------- tabs
const TABS = ["sync", "train", "jobs"];
function selectTab(name) {
  for (const t of TABS) {
    $(`tab-${t}`).setAttribute("aria-selected", String(t === name));
    $(`tab-${t}`).tabIndex = t === name ? 0 : -1;  // one stop in the Tab order: the selected tab (ARIA tabs)
    show($(`panel-${t}`), t === name);
  }
  if (name === "jobs") refreshJobs();
  history.replaceState(null, "", `#${name}`);
}

function tabKeys(e) {  // the arrow keys, Home and End move between the tabs, as the ARIA tabs pattern has it
  const at = TABS.indexOf(e.target.id.replace("tab-", ""));
  const to = {ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: TABS.length - 1}[e.key];
  if (at < 0 || to === undefined) return;
  e.preventDefault();
  const name = TABS[(to + TABS.length) % TABS.length];
  selectTab(name);
  $(`tab-${name}`).focus();
}

// Said to screen readers once (a live region): a stage begun, a job finished; not every redraw of the progress.
function announce(text) {
  const el = $("announce");
  el.textContent = "";
  setTimeout(() => { el.textContent = text; }, 50);
}

// ---------------------------------------------------------------- file pickers
function examplesFor(role) {
  return state.examples.filter((f) => (role === "train" ? f.has_video && !f.is_image && f.usable_as.audio
                                                         : f.usable_as[role]));
}

function fillExamples() {  // offered where there is one: the training tab's list held only "—" (the built-in
  for (const sel of document.querySelectorAll("select[data-role]")) {  // examples are a photo and a sound file)
    const keep = sel.value;
    sel.replaceChildren(new Option("—", ""));
    for (const f of examplesFor(sel.dataset.role)) sel.add(new Option(describeFile(f), f.id));
    sel.value = keep;
    show(sel.closest("label"), sel.options.length > 1);
  }
}

// The files chosen for the next job, kept over a reload (in localStorage, by id) while the server still has them.
const pickers = {};

async function restorePicked() {
  for (const p of Object.values(pickers)) await p.restore();
}

function setupPicker(view, role) {
  const input = $(`${view}-${role}-file`);
  const status = $(`${view}-${role}-status`);
  const example = $(`${view}-${role}-example`);
  const use = (rec) => {
    state[view][role] = rec;
    const problem = rec && rec.problems ? rec.problems[role === "video" ? "video" : "audio"] : null;
    let need = problem;
    if (view === "train" && rec) {
      need = rec.is_image || !rec.has_video
        ? `${rec.name}: a person model is trained from a video of the person talking, with their own voice`
        : rec.problems.video || rec.problems.audio;
    }
    if (rec && need) {  // taken by the server, but not usable here: it leaves the picker, as a file refused does
      status.textContent = need;
      status.className = "file-status bad";
      state[view][role] = null;
      input.value = "";
    } else if (rec) {
      status.textContent = `✓ ${describeFile(rec)}`;
      status.className = "file-status ok";
    } else {
      status.textContent = "";
      status.className = "file-status";
    }
    picker.waiting = false;
    if (state[view][role]) localStorage.setItem(`hyperlips.${view}-${role}`, rec.id);
    else localStorage.removeItem(`hyperlips.${view}-${role}`);
    if (view === "sync" && role === "audio") speechChanged();
    updateButtons();
  };
  let latest = 0, sending = null;  // the newest choice wins: an upload still under way for an older one is aborted
  // The file kept from before the reload, asked of the server where it is not an example. Only an answer that it is
  // gone (404) forgets it: no answer (a network blip) or a server in trouble is no verdict on the file (one failed
  // request forgot it), so it stays chosen, the picker says so, and it is asked for again until the server answers.
  // A file chosen while the server is asked (an upload, an example) is newer, and wins when the answer comes: it
  // was looked for only before asking, and the kept file took the newer one's place (a 404 forgot the newer one).
  const noun = view === "train" ? "footage" : role === "video" ? "face" : "speech";  // the form's own words for it
  const restore = async () => {
    const id = localStorage.getItem(`hyperlips.${view}-${role}`);
    if (!id || state[view][role]) return;
    const known = state.examples.find((f) => f.id === id);
    if (known) { example.value = id; use(known); return; }
    const mine = latest;  // a choice made since takes the next turn
    let rec;
    try {
      rec = await api("GET", `/api/files/${encodeURIComponent(id)}`);
    } catch (e) {
      if (mine !== latest) return;  // the picker, its status and what is kept are the newer choice's
      if (e.status === 0 || e.status >= 500) {
        const why = e.status === 0 ? "the server cannot be reached" : e.message.replace(/\.$/, "");
        status.textContent = `The ${noun} chosen before could not be fetched: ${why}. It stays chosen, and is ` +
                             "fetched again when the server answers.";
        status.className = "file-status warn";
        picker.waiting = true;
        setTimeout(() => { if (mine === latest) restore(); }, POLL_MS * 4);
      } else {  // gone from the server (deleted, or expired)
        localStorage.removeItem(`hyperlips.${view}-${role}`);
        if (picker.waiting) { status.textContent = ""; status.className = "file-status"; }
        picker.waiting = false;
      }
      updateButtons();
      return;
    }
    if (mine === latest) use(rec);
  };
  const picker = pickers[`${view}-${role}`] = { view, role, restore, waiting: false };
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return;
    const mine = ++latest;
    if (sending) sending.abort();
    example.value = "";
    state[view][role] = null;
    localStorage.removeItem(`hyperlips.${view}-${role}`);
    picker.waiting = false;
    state[view].uploading++;
    status.className = "file-status";
    status.textContent = `Uploading ${file.name}…`;
    updateButtons();
    try {
      const rec = await upload(file, (f) => {
        if (mine === latest) status.textContent = `Uploading ${file.name}… ${Math.round(f * 100)}%`;
      }, (xhr) => { sending = xhr; });
      if (mine === latest) use(rec);
    } catch (e) {
      if (mine === latest) {
        status.textContent = e.message;
        status.className = "file-status bad";
        input.value = "";
      }
    } finally {
      if (mine === latest) sending = null;
      state[view].uploading--;
      updateButtons();
    }
  });
  example.addEventListener("change", () => {
    latest++;  // an upload under way no longer counts
    if (sending) sending.abort();
    input.value = "";
    use(state.examples.find((f) => f.id === example.value) || null);
  });
  const drop = input.closest(".drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    }
  });
}

// ---------------------------------------------------------------- phoneme timings
// A phoneme file is checked as it is chosen, as the server reads a job's timings (it was read only when the job was
// submitted), and again when the speech changes; its text is kept for the job, over a reload too.
const MAX_JSON_BYTES = 1 << 20;  // the server reads a request's JSON (a job's, a check's) of at most 1 MB
const JOB_ROOM_BYTES = 4096;  // of which the job's other fields (ids, model, size...) take far less than this
let phonemeChecks = 0;

// What the text comes to as sent: a JSON string in UTF-8, where a line break, a tab or a quote takes two bytes (a
// file of 1 MB passed the page's check of its size, then came to more than the server reads)
function sentBytes(text) { return new Blob([JSON.stringify(text)]).size; }

// In words for the page's user (the server's refusal said "send a JSON body of at most 1 MB with a Content-Length");
// ``sent``: what its text came to, where it was read
function tooLarge(name, sent = null) {
  const most = sizeText(MAX_JSON_BYTES), came = sizeText(sent) === most ? `just over ${most}` : sizeText(sent);
  return `Phoneme timings: ${name} is too large to send: ` + (sent === null ? "" : `its text comes to ${came} as ` +
    "sent (a line break, tab or quote counts twice), and ") + `this server takes at most ${most} of phoneme ` +
    "timings. Use the timings of a shorter piece of speech.";
}

async function fileText(file) {  // as the command line reads one: UTF-16 with its mark (Praat's), UTF-8, else Latin-1
  const bytes = new Uint8Array(await file.arrayBuffer());
  const marked = bytes[0] === 0xff && bytes[1] === 0xfe ? "utf-16le" : bytes[0] === 0xfe && bytes[1] === 0xff ? "utf-16be" : "";
  if (marked) return new TextDecoder(marked).decode(bytes);
  try { return new TextDecoder("utf-8", {fatal: true}).decode(bytes); } catch (e) { return new TextDecoder("latin1").decode(bytes); }
}

function usePhonemes(chosen, text, how = "") {
  state.sync.phonemes = chosen;
  const status = $("sync-phonemes-status");
  status.textContent = text;
  status.className = `file-status ${how}`.trim();
  if (!chosen) $("sync-phonemes").value = "";  // a refused file is not left in the picker
  show($("sync-phonemes-clear"), Boolean(chosen));
  try {
    if (chosen) localStorage.setItem("hyperlips.sync-phonemes", JSON.stringify(chosen));
    else localStorage.removeItem("hyperlips.sync-phonemes");
  } catch (e) { /* too large to keep over a reload: kept for this visit */ }
  updateButtons();
}

// ``text``: the file's text, or the promise of it while the file is read. The check's turn is taken at once, as the
// file is chosen: a file chosen after it wins even where this one is read last (a large file, a slow disk: it took
// the newer one's place), and an answer for an older choice, or for the speech before, arriving late is dropped.
// ``again``: a check tried again after the server did not answer: what the page said stays until it answers, and
// Lip-sync does not wait for it.
async function checkPhonemes(name, text, again = false) {
  const mine = ++phonemeChecks;
  if (!again) {
    state.sync.phonemes = null;  // until its text is read
    state.sync.uploading++;
    $("sync-phonemes-status").className = "file-status";
    $("sync-phonemes-status").textContent = `Checking ${name}…`;
    updateButtons();
  }
  try {
    text = await text;
    if (mine !== phonemeChecks) return;
    const sent = sentBytes(text);
    if (sent + JOB_ROOM_BYTES > MAX_JSON_BYTES) { usePhonemes(null, tooLarge(name, sent), "bad"); return; }
    state.sync.phonemes = {name, text};  // the choice while it is checked (Lip-sync waits for it): a speech chosen
                                        // meanwhile checks it again
    const audio = state.sync.audio;  // its length: a last phoneme without an end lasts to it
    const got = await api("POST", "/api/phonemes", {phonemes: text, ...(audio ? {audio: audio.id} : {})});
    const said = got.warnings.length ? ` · ${got.warnings.join(" · ")}` : "";
    if (mine === phonemeChecks) {
      usePhonemes({name, text}, `✓ ${name} · ${got.phonemes} phoneme${got.phonemes === 1 ? "" : "s"}, ` +
                                `${got.start.toFixed(2)} to ${got.end.toFixed(2)} s${said}`, "ok");
    }
  } catch (e) {
    if (mine !== phonemeChecks) return;
    if (e.status === 0 || e.status >= 500) {  // no answer (a network blip), or a server in trouble: not a verdict on
      // the file. It stays chosen (one failed request dropped timings kept over a reload), goes with a job, whose
      // submission checks it too, and is checked again while nothing newer is chosen.
      const why = e.status === 0 ? "the server cannot be reached" : e.message.replace(/\.$/, "");
      usePhonemes({name, text}, `Phoneme timings: ${name} could not be checked: ${why}. It stays chosen, and is ` +
                                "checked again when the server answers.", "warn");
      setTimeout(() => { if (mine === phonemeChecks) checkPhonemes(name, text, true); }, POLL_MS * 4);
    } else {
      usePhonemes(null, e.status === 413 ? tooLarge(name) : phonemeReason(e.message, name), "bad");
    }
  } finally {
    if (!again) state.sync.uploading--;
    updateButtons();
  }
}

function setupPhonemes() {
  const input = $("sync-phonemes");
  input.addEventListener("change", () => {
    const file = input.files[0];
    if (!file) return;
    if (file.size > 2 * MAX_JSON_BYTES) {  // too large however it is read (UTF-16 halves at most): not read at all
      phonemeChecks++;  // a check under way no longer counts
      usePhonemes(null, tooLarge(file.name), "bad");
      return;
    }
    checkPhonemes(file.name, fileText(file));  // its turn taken now, not once it is read
  });
  $("sync-phonemes-clear").addEventListener("click", () => {
    phonemeChecks++;  // a check under way no longer counts
    usePhonemes(null, "");
    input.focus();  // the button is gone
  });
}

// The speech chosen after the timings (or dropped): they are read again against it, as the job will read them (its
// length ends a last phoneme without an end, and tells seconds from milliseconds); they stayed as read against the
// speech before. A check under way for the speech before no longer counts.
function speechChanged() {
  const chosen = state.sync.phonemes;
  if (chosen) checkPhonemes(chosen.name, chosen.text);
}

function restorePhonemes() {
  // after the files kept are asked for: timings chosen (or cleared) meanwhile are newer, and win (the kept ones,
  // checked last, took their place)
  if (phonemeChecks) return;
  let kept = null;
  try { kept = JSON.parse(localStorage.getItem("hyperlips.sync-phonemes")); } catch (e) { /* not ours */ }
  if (kept && typeof kept.name === "string" && typeof kept.text === "string") checkPhonemes(kept.name, kept.text);
}

function busy(view) {
  const j = state[view].job;
  return Boolean(j && (j.state === "queued" || j.state === "running"));
}

// What a greyed-out button waits for, said beside it (and to a screen reader, which the button names it to): it gave
// no reason, and the keyboard skips a disabled button
function missing(view) {
  const v = state[view];
  if (busy(view) || v.starting) return "";
  if (v.uploading) return "Waiting for the upload to finish.";
  if (Object.values(pickers).some((p) => p.view === view && p.waiting)) {  // its picker says why
    return "Waiting for the server to answer for the file chosen before.";
  }
  if (view === "sync") {
    const want = [!v.video && "a face (video or photo)", !v.audio && "the speech"].filter(Boolean);
    return want.length ? `Choose ${want.join(" and ")} to start.` : "";
  }
  const want = [!v.video && "choose a video of the person", !$("train-name").value.trim() && "give the model a name"]
    .filter(Boolean).join(" and ");
  return want ? `${want.charAt(0).toUpperCase()}${want.slice(1)} to start.` : "";
}

function updateButtons() {
  const s = state.sync;
  $("sync-start").disabled = !(s.video && s.audio && !s.uploading && !s.starting && !busy("sync"));
  const t = state.train;
  $("train-start-button").disabled = !(t.video && !t.uploading && !t.starting && !busy("train") &&
                                       $("train-name").value.trim());
  $("sync-missing").textContent = missing("sync");
  $("train-missing").textContent = missing("train");
}

// ---------------------------------------------------------------- models
async function loadModels() {
  const data = await api("GET", "/api/models");
  state.models = data.models;
  const sel = $("sync-model");
  const keep = sel.value;
  sel.replaceChildren(...state.models.map((m) => new Option(m.label, m.id)));
  if (state.models.some((m) => m.id === keep)) sel.value = keep;
  const start = $("train-start");
  const keepStart = start.value;
  start.replaceChildren(new Option("from scratch", ""),
                        ...state.models.filter((m) => m.kind !== "untrained").map((m) => new Option(m.label, m.id)));
  const starter = state.models.find((m) => m.kind === "starter");
  // the user's choice stays ("from scratch" is the empty value); the starter is the choice made for them at first
  start.value = state.startChosen ? keepStart : (starter ? starter.id : "");
  modelChanged();
}

function modelChanged() {
  const m = state.models.find((x) => x.id === $("sync-model").value);
  const size = $("sync-size");
  const keep = size.value;
  size.replaceChildren(...(m ? m.sizes : [128]).map((s) => new Option(s === 128 ? "128 px (base)" : `${s} px (HR decoder)`, s)));
  if ([...size.options].some((o) => o.value === keep)) size.value = keep;
  else if (m && m.kind !== "untrained") size.value = String(Math.max(...m.sizes));
  $("sync-model-note").textContent = m && m.kind === "untrained"
    ? "No trained weights on this server yet: the pipeline runs end to end, but the mouth is meaningless."
    : "";
}

// ---------------------------------------------------------------- following a job
function remember(view, jobId) {
  if (jobId) localStorage.setItem(`hyperlips.${view}`, jobId);
  else localStorage.removeItem(`hyperlips.${view}`);
}

async function follow(view, jobId) {
  let job;
  try {
    job = await api("GET", `/api/jobs/${jobId}`);
  } catch (e) {
    const current = state[view].job && state[view].job.id === jobId;
    if (/no job/.test(e.message)) { if (current) forget(view, jobId); return; } // (an earlier job's: not this view's)
    if (!current) return; // a check of a job this view no longer shows: its error is not this view's
    setError(`${view}-error`, e.message);
    state[view].unreachable = e.message;
    setTimeout(() => follow(view, jobId), POLL_MS * 4);
    return;
  }
  if (!state[view].job || state[view].job.id !== jobId) return; // another job took over
  const was = state[view].job;
  state[view].job = job;
  // a finished job checked again (is it still there?) is drawn again only where it changed: a redraw would clear
  // an error said since and put the form's choices back; the server's silence said here goes once it answers
  if (state[view].unreachable && $(`${view}-error`).textContent === state[view].unreachable) setError(`${view}-error`, "");
  state[view].unreachable = null;
  if (!(was.state === "done" && job.state === "done" && was.finished === job.finished)) render(view, job);
  if (job.state === "queued" || job.state === "running") setTimeout(() => follow(view, jobId), POLL_MS);
  else if (job.state === "done") setTimeout(() => follow(view, jobId), DONE_POLL_MS); // deleted elsewhere: said
  else remember(view, null); // a result stays on the page after a reload
}

// The job a view shows is gone (deleted here or elsewhere, or expired): its progress, Cancel and result go, and
// the page says so (of a job it remembered from an earlier visit too: its result was on the page then). Deleted
// with this page's own button (`quiet`), it says nothing.
function forget(view, jobId, quiet = false) {
  const shown = state[view].job && state[view].job.id === jobId;
  const earlier = !shown || state[view].job.remembered;
  remember(view, null);
  if (shown) state[view].job = null;
  show($(`${view}-job`), false);
  show($(view === "sync" ? "sync-cancel" : "train-cancel"), false);
  if (view === "sync") show($("sync-result"), false);
  setError(`${view}-error`, quiet ? "" : earlier
    ? "The last job's result is no longer on the server: it was deleted, or it expired."
    : "This job no longer exists: it was deleted, or it expired.");
  updateButtons();
}

function render(view, job) {
  const running = job.state === "queued" || job.state === "running";
  const cancelButton = $(view === "sync" ? "sync-cancel" : "train-cancel");
  const startButton = $(view === "sync" ? "sync-start" : "train-start-button");
  const hadFocus = document.activeElement === cancelButton || document.activeElement === startButton;
  const before = state[view].shown || {};
  const stage = running ? (STAGE_TEXT[(job.progress || {}).stage] || job.state) : job.state;
  // said once per stage, not at every redraw; a failed or cancelled job is said by the error line (an alert): said
  // here too, "Cancelled" was heard twice
  const said = running ? (stage === "queued" ? "Waiting in the queue" : stage.replace("…", ""))
    : job.state === "done" ? (view === "sync" ? "Lip-sync finished: the result is below" : "Training finished") : "";
  if (before.id === job.id && before.stage !== stage && said) announce(said);
  state[view].shown = {id: job.id, stage};
  show($(`${view}-job`), running || (view === "train" && job.state === "done"));
  show(cancelButton, running);
  setBar(view, job.fraction || 0);
  $(`${view}-stage`).textContent = stageLine(job);
  setError(`${view}-error`, job.state === "failed" ? pageWords(job.message, view) : job.state === "cancelled" ? "Cancelled." : "");
  if (view === "train" && job.state === "failed" && /^--minutes /.test(job.message || "")) {
    $("train-minutes").setAttribute("aria-invalid", "true");  // the budget left too little once the footage was ready
  }
  if (view === "sync") renderSyncResult(job);
  else renderTraining(job);
  updateButtons();
  if (hadFocus && running && !cancelButton.hidden) cancelButton.focus();  // the pressed button is disabled now
  else if (hadFocus && !running) {  // Cancel went with the job: to the result, or back to the button
    const next = view === "sync" && job.state === "done" ? $("sync-download") : startButton;
    (next.disabled ? $(`${view}-form`).querySelector("select, input") : next).focus();
  }
}

function renderSyncResult(job) {
  const box = $("sync-result");
  if (job.state !== "done" || !job.result) { show(box, false); return; }
  const video = $("sync-output");
  const url = `${job.result.url}?v=${job.id}`;
  if (video.getAttribute("src") !== url) {
    video.src = url;
    video.load();
  }
  $("sync-download").href = job.result.download_url;
  const r = job.result;
  $("sync-facts").textContent = `${r.frames} frames, ${r.width}×${r.height}, ${Number(r.seconds).toFixed(1)} s` +
    (r.frames_with_face < r.frames ? ` · mouth generated in ${r.frames_with_face} of them` : "");
  const warned = Array.isArray(r.warnings) ? r.warnings : [];  // silent speech, timings past its end, ...
  $("sync-warnings").replaceChildren(...warned.map((w) => {
    const li = document.createElement("li"); li.textContent = pageWords(w); return li;
  }));
  show($("sync-warnings-box"), warned.length > 0);
  const stages = (job.progress && job.progress.stages) || {};
  $("sync-times").textContent = Object.entries(stages)
    .map(([k, s]) => `${(STAGE_TEXT[k] || k).replace("…", "")} ${s < 10 ? Number(s).toFixed(1) + " s" : fmtSeconds(s)}`)
    .join(" · ");
  show(box, true);
}

// The held-out figures in words, with which way is better (the training's keys, "val/mouth_l1", meant nothing to a
// user); the 1 - r twins that pick the best checkpoint say the same as their r and are left out. [label, shown as]
const VAL_FIGURES = {
  opening_r: ["Mouth opening follows the real one (correlation up to 1; higher is better)"],
  opening_r_other: ["The same, drawn on a frame of another moment as a lip-sync does (higher is better)"],
  shape_r: ["Mouth shapes read from the speech match the real ones (correlation up to 1; higher is better)"],
  mouth_l1: ["Mouth difference from the real frames (lower is better)"],
  l1: ["Face difference from the real frames (lower is better)"],
  sync: ["Lip-sync error as the sync expert judges it (lower is better)"],
  lower_psnr: ["Lower face's likeness to the real frames (PSNR in dB; higher is better)", (v) => `${v.toFixed(1)} dB`],
  shape_mse: ["Mouth-shape error (lower is better)"],
  sharpness: ["Mouth sharpness against the real frames (1 is as sharp; below 1 is blurrier)", (v) => v.toFixed(2)],
  faces_found: ["Generated frames in which a face is found (higher is better)", (v) => `${Math.round(v * 100)}%`],
  opening_err: null, opening_err_other: null,
};
function valRows(val) {
  const known = Object.keys(VAL_FIGURES);
  const order = (k) => { const at = known.indexOf(k.replace(/^val\//, "")); return at < 0 ? known.length : at; };
  return Object.entries(val).filter(([k]) => VAL_FIGURES[k.replace(/^val\//, "")] !== null)
    .sort(([a], [b]) => order(a) - order(b)).map(([k, v]) => {
      const [label, as] = VAL_FIGURES[k.replace(/^val\//, "")] || [k];
      const shown = typeof v !== "number" ? (v == null ? "—" : String(v)) : as ? as(v) : v.toPrecision(3);
      return [label, shown];
    });
}

function renderTraining(job) {
  const p = job.progress || {};
  const box = $("train-preview-box");
  if (p.preview) {
    const img = $("train-preview");
    const url = `/api/jobs/${job.id}/preview?v=${encodeURIComponent(p.preview + ":" + (p.step ?? ""))}`;
    if (img.getAttribute("src") !== url) img.src = url;
    show(box, true);
  }
  const table = $("train-val");
  const val = p.val && typeof p.val === "object" ? p.val : {};
  table.replaceChildren(...valRows(val).map(([label, shown]) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th"); th.textContent = label; th.scope = "row";
    const td = document.createElement("td"); td.textContent = shown;
    tr.append(th, td);
    return tr;
  }));
  if (table.rows.length) table.createCaption().textContent = "Held-out figures (frames the model has not trained on)";
  const done = $("train-done");
  if (job.state === "done" && job.result) {
    const warned = Array.isArray(job.result.warnings) ? job.result.warnings : [];  // two people in view, ...
    const face = job.result.face != null ? job.result.face : job.params && job.params.face;
    const who = face != null  // the person it learnt, where the footage shows others: the sync form follows the
      ? ` It learnt the ${ordinal(+face + 1)} face from the left: on footage with others in view, choose ` +
        `“${ordinal(+face + 1)} from the left” under Face to follow.`  // largest face by default
      : (job.result.face_box || (job.params && job.params.face_box))
        ? " It learnt the face in the box given (face_box): a sync job of footage with others in view takes that " +
          "box too (the API's face_box)." : "";
    done.textContent = `The model “${job.result.name}” is ready: choose it under Lip-sync → Model.${who}` +
      (warned.length ? ` Training warned: ${warned.map((w) => pageWords(w, "train")).join(" · ")}` : "");
    show(done, true);
    $("train-stage").textContent = "Finished.";
    setBar("train", 1);
    loadModels().catch(() => {});
  } else {
    show(done, false);
  }
}

// ``makeBody()``: the job's request (may wait, e.g. for a file's text). One job per press: a second press (a
// double-click) before the server has answered was a second job, and the page followed only one of the two.
async function start(view, makeBody) {
  if (state[view].starting || busy(view)) return;
  state[view].starting = true;
  updateButtons();
  setError(`${view}-error`, "");
  if (view === "sync") show($("sync-result"), false);
  else show($("train-done"), false);
  try {
    for (const id of ["train-name", "train-minutes"]) $(id).removeAttribute("aria-invalid");
    const job = await api("POST", "/api/jobs", await makeBody());
    state[view].job = job;
    remember(view, job.id);
    const pressed = $(view === "sync" ? "sync-start" : "train-start-button");
    const focused = document.activeElement === pressed || document.activeElement === document.body;
    render(view, job);
    if (focused) $(view === "sync" ? "sync-cancel" : "train-cancel").focus();  // not lost with the disabled button
    setTimeout(() => follow(view, job.id), POLL_MS);
  } catch (e) {
    setError(`${view}-error`, pageWords(e.message, view));
    const field = {name: "train-name", minutes: "train-minutes"}[(e.message.match(/^(\w+): /) || [])[1]];
    if (view === "train" && field) {  // the field the reason is about: marked, and the place to fix it
      $(field).setAttribute("aria-invalid", "true");
      $(field).focus();
    }
  } finally {
    state[view].starting = false;
    updateButtons();
  }
}

async function cancel(view) {
  const job = state[view].job;
  if (!job) { setError(`${view}-error`, "There is no job to cancel."); return; }
  try { await api("POST", `/api/jobs/${job.id}/cancel`); } catch (e) { setError(`${view}-error`, e.message); }
}

// ---------------------------------------------------------------- jobs tab
async function refreshJobs() {
  if ($("panel-jobs").hidden) return;
  let data;
  try { data = await api("GET", "/api/jobs?limit=50"); } catch (e) {
    $("jobs-note").textContent = state.jobsUnreachable = e.message; return;
  }
  if (state.jobsUnreachable && $("jobs-note").textContent === state.jobsUnreachable) {
    $("jobs-note").textContent = "";  // the server answers again (the table may not have changed meanwhile)
    state.jobsSeen = null;  // and the note the table sets is written again
  }
  state.jobsUnreachable = null;
  // the table is rebuilt only when a job changed, and the button that had the focus has it again: rebuilt every 3 s,
  // it threw a keyboard user back to the first row
  const seen = JSON.stringify(data.jobs.map((j) => [j.id, j.state, Math.round((j.fraction || 0) * 100), j.message]));
  if (seen === state.jobsSeen && $("jobs-body").children.length) return;
  state.jobsSeen = seen;
  const focused = document.activeElement && $("jobs-body").contains(document.activeElement)
    ? document.activeElement.dataset.focusKey : null;
  const rows = data.jobs.map((j) => {
    const tr = document.createElement("tr");
    const when = new Date(j.created * 1000).toLocaleString();
    const what = j.kind === "sync" ? `lip-sync ${j.params.video_name} + ${j.params.audio_name}`
                                   : `train “${j.params.name}” on ${j.params.video_name}`;
    const st = j.state === "running" ? `running (${Math.round(j.fraction * 100)}%)`
             : j.state === "failed" ? `failed: ${pageWords(j.message, j.kind === "sync" ? "sync" : "train")}`
             : j.state === "done" && j.result && Array.isArray(j.result.warnings) && j.result.warnings.length
               ? `done, with ${j.result.warnings.length === 1 ? "a warning" : `${j.result.warnings.length} warnings`}: ` +
                 j.result.warnings.map((w) => pageWords(w, j.kind === "sync" ? "sync" : "train")).join(" · ")
             : j.state;
    for (const [text, cls] of [[when, ""], [what, ""], [st, `state-${j.state}`]]) {
      const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.append(td);
    }
    const td = document.createElement("td");
    if (j.result && j.result.url) {
      const a = document.createElement("a"); a.href = j.result.download_url; a.textContent = "download"; td.append(a);
      a.setAttribute("aria-label", `download: ${what}`);
      a.dataset.focusKey = `${j.id}:download`;
    }
    const act = document.createElement("button");
    const live = j.state === "queued" || j.state === "running";
    act.textContent = live ? "cancel" : "delete";
    act.setAttribute("aria-label", `${act.textContent}: ${what}`);  // each row's buttons told apart
    act.dataset.focusKey = `${j.id}:${act.textContent}`;
    act.addEventListener("click", async () => {
      try {
        await api(live ? "POST" : "DELETE", live ? `/api/jobs/${j.id}/cancel` : `/api/jobs/${j.id}`);
        if (!live) for (const view of ["sync", "train"]) if (state[view].job && state[view].job.id === j.id) forget(view, j.id, true);
      } catch (e) { $("jobs-note").textContent = e.message; }
      refreshJobs();
    });
    td.append(act);
    tr.append(td);
    return tr;
  });
  $("jobs-body").replaceChildren(...rows);
  if (focused) {
    const again = [...$("jobs-body").querySelectorAll("[data-focus-key]")].find((el) => el.dataset.focusKey === focused)
      || [...$("jobs-body").querySelectorAll("[data-focus-key]")].find((el) => el.dataset.focusKey.startsWith(focused.split(":")[0]));
    if (again) again.focus();
  }
  const keep = state.info ? state.info.limits.keep_hours : 24;
  $("jobs-note").textContent = data.jobs.length ? `Finished jobs are kept ${keep} h.` : "No jobs yet.";
}

// ---------------------------------------------------------------- start-up
async function init() {
  for (const sel of document.querySelectorAll("select[data-faces]"))  // the faces to follow or learn, from the left
    for (let n = 0; n < 4; n++) sel.add(new Option(`${ordinal(n + 1)} from the left`, String(n)));
  for (const t of TABS) {
    $(`tab-${t}`).addEventListener("click", () => selectTab(t));
    $(`tab-${t}`).addEventListener("keydown", tabKeys);
  }
  setupPicker("sync", "video");
  setupPicker("sync", "audio");
  setupPicker("train", "video");
  setupPhonemes();
  $("sync-model").addEventListener("change", modelChanged);
  $("train-start").addEventListener("change", () => { state.startChosen = true; });
  $("train-name").addEventListener("input", updateButtons);
  $("sync-cancel").addEventListener("click", () => cancel("sync"));
  $("train-cancel").addEventListener("click", () => cancel("train"));
  $("sync-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const face = $("sync-face").value;
    const phonemes = state.sync.phonemes ? state.sync.phonemes.text : null;  // the server reads every format
    start("sync", async () => {
      return {
        kind: "sync", video: state.sync.video.id, audio: state.sync.audio.id, model: $("sync-model").value,
        size: Number($("sync-size").value), face: face === "" ? null : Number(face), loop: $("sync-loop").value,
        ...(phonemes === null ? {} : {phonemes}),
      };
    });
  });
  $("train-form").addEventListener("submit", (e) => {
    e.preventDefault();
    start("train", async () => ({
      kind: "finetune", video: state.train.video.id, name: $("train-name").value.trim(),
      minutes: Number($("train-minutes").value), start_from: $("train-start").value || null,
      face: $("train-face").value === "" ? null : Number($("train-face").value),
    }));
  });
  setInterval(refreshJobs, 3000);
  try {
    state.info = await api("GET", "/api/info");
    $("train-minutes").min = String(state.info.limits.min_train_minutes);
    $("train-minutes").max = String(state.info.limits.max_train_minutes);
    $("footer-info").textContent = `hyperlips ${state.info.version} · files up to ${sizeText(state.info.limits.max_upload_bytes)}` +
      ` and ${state.info.limits.max_seconds} s`;
    await loadModels();
    state.examples = (await api("GET", "/api/examples")).files;
    fillExamples();
    await restorePicked();
    restorePhonemes();
  } catch (e) {
    setError("server-error", e.message);
  }
  for (const view of ["sync", "train"]) {
    const id = localStorage.getItem(`hyperlips.${view}`);
    if (id) { state[view].job = { id, state: "queued", remembered: true }; follow(view, id); }
  }
  const tab = location.hash.slice(1);
  selectTab(["sync", "train", "jobs"].includes(tab) ? tab : "sync");
  updateButtons();
}

document.addEventListener("DOMContentLoaded", init);
