"""``hyperlips serve``: a web page and an HTTP API over lip-sync and person-model training.

The layer sits on top of everything else (nothing below imports it):

- ``settings.py``  what a server is allowed to do (limits, folders, how many jobs at once);
- ``store.py``     the job queue and the uploaded files, in SQLite (survives a restart of the server);
- ``uploads.py``   receiving a file: safe storage names, size and duration limits, the CLI's own error lines;
- ``catalog.py``   the models a job can use and the example inputs;
- ``jobs.py``      a request turned into a queued job (options checked), and a job as the API shows it;
- ``runner.py``    the scheduler: one worker process per job, progress, cancel, retention;
- ``worker.py``    the worker process itself (``python -m hyperlips.serve.worker JOB_FOLDER``);
- ``server.py``    a running server (store + scheduler + listener) and the command's main loop;
- ``routes.py``    the HTTP routes of the page and the API (standard library ``http.server``);
- ``openapi.py``   the OpenAPI description of those routes;
- ``commands.py``  the ``hyperlips serve`` subcommand;
- ``static/``      the page (HTML, CSS and JavaScript served from the package, nothing fetched elsewhere).
"""
