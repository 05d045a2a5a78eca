"""`python -m flows.temporary_server UVICORN_ARGS`: Prefect's temporary server as the training
command line launches it (flows.server.EarlyServer): uvicorn on Prefect's app factory, the
command Prefect runs for its own temporary server, with the import of Prefect's server made
cheaper.

Importing Prefect's server (its API routes, their pydantic models, the database layer) is most
of the server's start-up, and the run waits for that start-up. Python's cyclic garbage collector
runs again and again during the import, each time through every object made so far, though
those objects live as long as the server. As in the training command line (tasks.preload),
collection is paused during the import; then one collection clears its garbage, the rest is
frozen (`gc.freeze`: never scanned again) and collection resumes for the requests. Paired with
uvicorn's own command line, the server answered its first health check in 0.80 of the time
(docs/performance.md, session 19)."""

from __future__ import annotations

from tasks.preload import pause_collection, resume_collection


def main() -> None:
    pause_collection()
    try:
        import prefect.server.api.server  # noqa: F401  (the app factory's module)
    finally:
        resume_collection()
    from uvicorn.main import main as uvicorn

    uvicorn(prog_name="uvicorn")  # reads the command line's arguments


if __name__ == "__main__":
    main()
