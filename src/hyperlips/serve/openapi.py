"""The OpenAPI 3.1 description of the HTTP API, served at ``/api/openapi.json``."""

from __future__ import annotations

from ..mouth import MOUTH_OPTIONS
from .jobs import MIN_TRAIN_MINUTES

_ERROR = {"description": "the reason, one line", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JOB = {"description": "the job", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}}
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}]


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(version: str) -> dict:
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hyperlips",
            "version": version,
            "description": "Lip-sync a video (or photo) to speech, and train person models. Upload the inputs "
                           "(POST /api/files), submit a job (POST /api/jobs), poll it (GET /api/jobs/{id}), then "
                           "fetch the result (GET /api/jobs/{id}/result). Jobs wait in a queue that survives a "
                           "restart of the server. Every answer is JSON, errors too ({\"error\": \"one line\"}); any "
                           "route may also answer 403 (a request addressed to another host, or a change sent from "
                           "another site's page) and 405 (another method; its Allow header names those taken).",
        },
        "paths": {
            "/api/health": {"get": {"summary": "the server is up", "responses": {"200": _json({"type": "object"})}}},
            "/api/info": {"get": {"summary": "version, limits and queue length", "responses": {"200": _json(ref("Info"))}}},
            "/api/openapi.json": {"get": {"summary": "this document", "responses": {"200": _json({"type": "object"})}}},
            "/api/models": {"get": {"summary": "models a sync job can use; the first is the default",
                                    "responses": {"200": _json({"type": "object", "properties": {
                                        "models": {"type": "array", "items": ref("Model")}}})}}},
            "/api/examples": {"get": {"summary": "example inputs kept on the server (use their ids like uploads)",
                                      "responses": {"200": _json({"type": "object", "properties": {
                                          "files": {"type": "array", "items": ref("File")}}})}}},
            "/api/files": {"post": {
                "summary": "upload one file (the raw bytes as the body)",
                "description": "The name is only displayed; the file is stored under a random id. A file the "
                               "server cannot read, or longer than the limit, is refused with the reason. Send "
                               "`Expect: 100-continue` to learn of a size refusal before sending the bytes.",
                "parameters": [{"name": "name", "in": "query", "required": True, "schema": {"type": "string"},
                                "description": "the file's name; its extension tells the type (mp4, png, wav, ...)"}],
                "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {
                    "type": "string", "format": "binary"}}}},
                "responses": {"201": _json(ref("File"), "stored"), "400": _ERROR,
                              "411": _ERROR, "413": _ERROR, "415": _ERROR, "507": _ERROR},
            }},
            "/api/files/{id}": {
                "get": {"summary": "an uploaded file's facts", "parameters": _ID,
                        "responses": {"200": _json(ref("File")), "404": _ERROR}},
                "delete": {"summary": "delete an upload", "parameters": _ID,
                           "responses": {"200": _json({"type": "object"}), "404": _ERROR}},
            },
            "/api/phonemes": {"post": {
                "summary": "check phoneme timings as a sync job reads them, without queuing a job",
                "description": "How many phonemes, from when to when, and what reading them warned of; 400 with "
                               "the reason a sync job would give when they cannot be read.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["phonemes"], "additionalProperties": False, "properties": {
                        "phonemes": {"description": "as a sync job's phonemes (the text of a phoneme file, or a "
                                                    "list)"},
                        "audio": {"type": "string", "description": "file id of the speech, for its length"}}}}}},
                "responses": {"200": _json({"type": "object", "properties": {
                    "phonemes": {"type": "integer"}, "start": {"type": "number"}, "end": {"type": "number"},
                    "warnings": {"type": "array", "items": {"type": "string"}}}}),
                              "400": _ERROR, "411": _ERROR, "413": _ERROR},
            }},
            "/api/jobs": {
                "post": {"summary": "queue a job", "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"oneOf": [ref("SyncRequest"), ref("FinetuneRequest")]}}}},
                         "responses": {"201": _JOB, "400": _ERROR, "411": _ERROR, "413": _ERROR, "507": _ERROR}},
                "get": {"summary": "recent jobs, newest first",
                        "parameters": [{"name": "kind", "in": "query", "schema": {"enum": ["sync", "finetune"]}},
                                       {"name": "limit", "in": "query",
                                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}}],
                        "responses": {"200": _json({"type": "object", "properties": {
                            "jobs": {"type": "array", "items": ref("Job")}}}), "400": _ERROR}},
            },
            "/api/jobs/{id}": {
                "get": {"summary": "a job's state and progress", "parameters": _ID,
                        "responses": {"200": _JOB, "404": _ERROR}},
                "delete": {"summary": "delete a job and its files (a running job is stopped first)", "parameters": _ID,
                           "responses": {"200": _json({"type": "object"}), "404": _ERROR}},
            },
            "/api/jobs/{id}/cancel": {"post": {"summary": "cancel a queued or running job", "parameters": _ID,
                                               "responses": {"200": _JOB, "404": _ERROR}}},
            "/api/jobs/{id}/result": {"get": {
                "summary": "the synced video (H.264 + AAC MP4); byte ranges are served, with ETag and Last-Modified "
                           "(If-None-Match, If-Range)",
                "parameters": [*_ID, {"name": "download", "in": "query", "schema": {"type": "string"},
                                      "description": "1: send as an attachment with a file name"}],
                "responses": {"200": {"description": "the video", "content": {"video/mp4": {}}},
                              "206": {"description": "part of the video", "content": {"video/mp4": {}}},
                              "304": {"description": "not modified (If-None-Match named its ETag)"},
                              "404": _ERROR, "409": _ERROR, "416": _ERROR}}},
            "/api/jobs/{id}/preview": {"get": {"summary": "a training job's newest held-out preview image",
                                               "parameters": _ID, "responses": {
                                                   "200": {"description": "PNG", "content": {"image/png": {}}},
                                                   "404": _ERROR}}},
            "/api/jobs/{id}/log": {"get": {"summary": "the end of the job's worker log (for diagnosing a failure)",
                                           "parameters": _ID, "responses": {
                                               "200": {"description": "text", "content": {"text/plain": {}}},
                                               "404": _ERROR}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Info": {"type": "object", "properties": {
                "version": {"type": "string"}, "jobs_at_once": {"type": "integer"},
                "limits": {"type": "object", "properties": {
                    "max_upload_bytes": {"type": "integer"}, "max_seconds": {"type": "number"},
                    "min_train_minutes": {"type": "number"}, "max_train_minutes": {"type": "number"},
                    "keep_hours": {"type": "number"}}},
                "accepted_suffixes": {"type": "array", "items": {"type": "string"}},
                "accepted_kinds": {"type": "string"},
                "queue": {"type": "object", "properties": {"queued": {"type": "integer"}, "running": {"type": "integer"}}}}},
            "Model": {"type": "object", "properties": {
                "id": {"type": "string", "examples": ["untrained", "person:anna"]}, "label": {"type": "string"},
                "kind": {"enum": ["starter", "person", "untrained"]},
                "sizes": {"type": "array", "items": {"enum": [128, 256, 512]}}}},
            "File": {"type": "object", "properties": {
                "id": {"type": "string"}, "name": {"type": "string"}, "size": {"type": "integer"},
                "example": {"type": "boolean"}, "has_video": {"type": "boolean"}, "has_audio": {"type": "boolean"},
                "is_image": {"type": "boolean"}, "width": {"type": "integer"}, "height": {"type": "integer"},
                "video_seconds": {"type": ["number", "null"]}, "audio_seconds": {"type": "number"},
                "problems": {"type": "object", "description": "why it cannot be the video or the audio of a job",
                             "properties": {"video": {"type": "string"}, "audio": {"type": "string"}}},
                "usable_as": {"type": "object", "properties": {"video": {"type": "boolean"},
                                                               "audio": {"type": "boolean"}}}}},
            "SyncRequest": {"type": "object", "required": ["video", "audio"], "additionalProperties": False, "properties": {
                "kind": {"const": "sync"},
                "video": {"type": "string", "description": "file id: the face (a video or a photo)"},
                "audio": {"type": "string", "description": "file id: the speech (audio, or a video with sound)"},
                "model": {"type": "string", "description": "a model id from GET /api/models (default: the first)"},
                "size": {"enum": [128, 256, 512], "description": "mouth render size; default the model's largest"},
                "face": {"type": ["integer", "null"], "description": "follow face N (0 = leftmost); default the largest"},
                "face_box": {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                "loop": {"enum": ["pingpong", "hold"]},
                "reference": {"description": "best, first or a frame number"},
                "crf": {"type": "integer", "minimum": 0, "maximum": 51,
                        "description": "H.264 quality: 0 lossless ... 51 smallest (default 18, visually lossless)"},
                "preset": {"enum": ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                                    "slower", "veryslow", "placebo"],
                           "description": "libx264 speed/size trade-off (default veryfast)"},
                "pix_fmt": {"enum": ["yuv420p", "yuv444p"],
                            "description": "yuv420p plays everywhere (default; odd sides gain one repeated edge "
                                           "pixel); yuv444p keeps the exact size and full colour, few players"},
                "temporal_blend": {"type": "number", "minimum": 0, "maximum": 1 / 3,
                                   "description": "each generated face blended with the frames' before and after it, "
                                                  "weight each (default 0.25: steadier lips; 0 off)"},
                "mouth": {"enum": list(MOUTH_OPTIONS),
                          "description": "render: the network draws the lower face; warp (HyperLips-Lite models): "
                                         "the video's own lips and jaw moved to the mouth read from the speech, at "
                                         "full resolution; hybrid: the network's face with that warped frame's fine "
                                         "detail; auto (default): warp with the shipped starter, hybrid with a "
                                         "person model"},
                "phonemes": {"type": ["array", "object", "string", "null"],
                             "items": {"type": "object", "required": ["start", "phone"], "properties": {
                                 "start": {"type": "number"}, "end": {"type": "number"}, "phone": {"type": "string"}}},
                             "description": "what the speech says and when (a speech synthesiser's or a forced "
                                            "aligner's phoneme timings, seconds; ARPAbet, espeak-ng or IPA): the "
                                            "mouth of a HyperLips-Lite model closes on every /p b m/. Or "
                                            "{\"alphabet\": ..., \"phonemes\": [...]}, or the text of a phoneme "
                                            "file (lines of START [END] PHONE, JSON, a TextGrid)"}}},
            "FinetuneRequest": {"type": "object", "required": ["kind", "video", "name"], "additionalProperties": False, "properties": {
                "kind": {"const": "finetune"},
                "video": {"type": "string", "description": "file id: the person talking, with their own voice"},
                "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"},
                "minutes": {"type": "number", "minimum": MIN_TRAIN_MINUTES, "description": "wall-clock training "
                            "budget, preparing the footage included (default 10)"},
                "start_from": {"type": ["string", "null"], "description": "a model id to start from; null or "
                               "\"untrained\": random weights; \"default\" or left out: the shipped starter"},
                "face": {"type": ["integer", "null"], "description": "learn face N (0 = leftmost) where the video "
                         "shows several; default the largest"},
                "face_box": {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                             "description": "or learn the face overlapping this box, [x1, y1, x2, y2] in pixels"}}},
            "Job": {"type": "object", "properties": {
                "id": {"type": "string"}, "kind": {"enum": ["sync", "finetune"]},
                "state": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
                "stage": {"type": "string", "description": "queued, starting, loading, faces, lip-sync, (training "
                                                           "stages), done, failed or cancelled"},
                "fraction": {"type": "number", "minimum": 0, "maximum": 1},
                "progress": {"type": "object", "description": "stage, done, total, elapsed_s, eta_s, stages "
                                                              "(sync: seconds per stage seen so far; training: step, "
                                                              "val, preview)"},
                "queue_position": {"type": "integer", "description": "queued jobs ahead of it (queued jobs only; 0: it "
                                                                     "starts next, once a running job leaves room)"},
                "running_ahead": {"type": "integer", "description": "jobs running now, which it waits for too (queued "
                                                                    "jobs only)"},
                "attempts": {"type": "integer", "description": "times a worker started it (a server stopped "
                                                               "during it runs it again, at most 3 times)"},
                "message": {"type": ["string", "null"], "description": "why it failed, one line; for a job done from odd "
                            "input, the warnings"},
                "params": {"type": "object"}, "result": {"type": "object"}, "links": {"type": "object"},
                "created": {"type": "number"}, "started": {"type": ["number", "null"]},
                "finished": {"type": ["number", "null"]}}},
        }},
    }
