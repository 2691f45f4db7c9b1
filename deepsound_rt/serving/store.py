"""The job store: an embedded SQLite database beside a data directory of per-job folders.

Every state change is one SQLite transaction, so a crash leaves each job in a state it can go on
from. Several processes may share one data directory (Ray Serve replicas): a worker *claims* a job
with a lease that its process renews while it runs; a job whose lease ran out (its worker died) is
claimed again by the next free worker, up to ``max_attempts``. A single-box server takes the
directory for itself (an exclusive lock) and so can re-queue running jobs at once on start.

Ids are made here (random hex) and checked against :data:`JOB_ID` before any path is built from
them; a request never names a file.
"""
from __future__ import annotations

import fcntl
import json
import re
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeepSoundError

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
TERMINAL = frozenset({"done", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    options TEXT NOT NULL,
    filename TEXT NOT NULL,
    input TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    steps TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    has_audio INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, id);
"""


class QueueFull(DeepSoundError):
    """The bounded queue has no room; the client should retry later."""


class DataDirInUse(DeepSoundError):
    """Another server holds the data directory."""


@dataclass
class Job:
    id: str
    status: str
    options: dict
    filename: str
    input: str
    created: float
    started: float | None
    finished: float | None
    error: str | None
    steps: list[dict]
    attempts: int
    worker: str | None
    cancel_requested: bool
    has_audio: bool | None


def new_job_id() -> str:
    return secrets.token_hex(16)


class JobStore:
    """Jobs in ``data_dir/jobs.sqlite3``, their files in ``data_dir/jobs/<id>/``.

    ``exclusive``: this process is the only server on the directory (single box); otherwise the
    directory is shared (Ray replicas) and only expired leases say that a worker is gone.
    """

    def __init__(self, data_dir: Path, *, exclusive: bool, max_attempts: int = 3):
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.max_attempts = max_attempts
        try:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DeepSoundError(f"{self.data_dir}: cannot create the data directory ({error.strerror})") from error
        self._lock_file = open(self.data_dir / "server.lock", "a")
        try:  # single box: alone; replicas: shared with each other, never with a single box
            fcntl.flock(self._lock_file, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise DataDirInUse(f"{self.data_dir}: another deepsound-rt server uses this data directory") from None
        self.exclusive = exclusive
        self._local = threading.local()
        self._db_path = self.data_dir / "jobs.sqlite3"
        self._db().executescript(_SCHEMA)

    def close(self) -> None:
        self._lock_file.close()

    # -- connections: one per thread, autocommit, explicit transactions -----------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._db_path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    class _Transaction:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, kind, value, traceback) -> None:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")

    def _transaction(self) -> "JobStore._Transaction":
        return JobStore._Transaction(self._db())

    # -- files ---------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs_dir / job_id

    def input_path(self, job: Job) -> Path:
        return self.job_dir(job.id) / job.input

    # -- submitting ----------------------------------------------------------------------------

    def insert(self, job_id: str, filename: str, input_name: str, options: dict, queue_size: int) -> None:
        """Queue a job whose input is already in its folder; :class:`QueueFull` when ``queue_size``
        jobs are waiting (checked in the same transaction, so concurrent submits cannot overfill)."""
        with self._transaction() as db:
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if waiting >= queue_size:
                raise QueueFull(f"the queue is full ({waiting} jobs waiting)")
            db.execute("INSERT INTO jobs (id, status, options, filename, input, created) "
                       "VALUES (?, 'queued', ?, ?, ?, ?)",
                       (job_id, json.dumps(options), filename, input_name, time.time()))
            self._event(db, job_id, "status", {"status": "queued"})

    # -- reading -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    def queue_position(self, job: Job) -> int:
        """How many queued jobs run before this one (0: next)."""
        return self._db().execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND created < ?",
                                  (job.created,)).fetchone()[0]

    def mean_recent_seconds(self, count: int = 20) -> float | None:
        """Mean run time of the last ``count`` finished jobs: what a retry should wait for."""
        value = self._db().execute(
            "SELECT AVG(finished - started) FROM (SELECT finished, started FROM jobs WHERE status = 'done' "
            "ORDER BY finished DESC LIMIT ?)", (count,)).fetchone()[0]
        return value

    def events_since(self, job_id: str, after: int) -> tuple[list[tuple[int, str, str]], str | None]:
        """Events after event id ``after`` and the job's status (None once it is deleted), read in one
        snapshot so that a terminal status means no event is still to come."""
        db = self._db()
        db.execute("BEGIN")
        try:
            rows = db.execute("SELECT id, kind, data FROM events WHERE job_id = ? AND id > ? ORDER BY id",
                              (job_id, after)).fetchall()
            status = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        finally:
            db.execute("COMMIT")
        return [tuple(row) for row in rows], None if status is None else status[0]

    # -- working -------------------------------------------------------------------------------

    def claim(self, worker: str, lease_s: float) -> Job | None:
        """The oldest queued job, or a running one whose worker stopped renewing its lease, now
        running on ``worker`` (its step records start over). A job that has already used up
        ``max_attempts`` fails instead."""
        now = time.time()
        with self._transaction() as db:
            while True:
                row = db.execute(
                    "SELECT * FROM jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < ?) "
                    "ORDER BY created LIMIT 1", (now,)).fetchone()
                if row is None:
                    return None
                job = _job(row)
                if job.attempts >= self.max_attempts:
                    error = f"stopped after {job.attempts} attempts: each one lost its worker (crash or restart)"
                    self._set_final(db, job.id, "failed", error, None)
                    continue
                db.execute("UPDATE jobs SET status = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, "
                           "started = ?, steps = '[]' WHERE id = ?", (worker, now + lease_s, now, job.id))
                detail = {"status": "running", "attempt": job.attempts + 1, "worker": worker}
                if job.status == "running":
                    detail["retry_of"] = job.worker
                self._event(db, job.id, "status", detail)
                return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)).fetchone())

    def renew(self, workers: list[str], lease_s: float) -> None:
        """Extend the leases of every job these workers run (the heartbeat)."""
        if workers:
            marks = ",".join("?" * len(workers))
            with self._transaction() as db:
                db.execute(f"UPDATE jobs SET lease_until = ? WHERE status = 'running' AND worker IN ({marks})",
                           (time.time() + lease_s, *workers))

    def check(self, job_id: str, worker: str) -> str:
        """``ok`` to go on, ``cancel`` when a client asked for it, ``lost`` when the job is no longer
        this worker's (its lease ran out and another worker took it, or it was deleted)."""
        row = self._db().execute("SELECT status, worker, cancel_requested FROM jobs WHERE id = ?",
                                 (job_id,)).fetchone()
        if row is None or row["status"] != "running" or row["worker"] != worker:
            return "lost"
        return "cancel" if row["cancel_requested"] else "ok"

    def add_event(self, job_id: str, worker: str, kind: str, data: dict) -> None:
        with self._transaction() as db:
            if self._owns(db, job_id, worker):
                self._event(db, job_id, kind, data)

    def add_step(self, job_id: str, worker: str, record: dict) -> None:
        """A finished step: appended to the job's records, and an event."""
        with self._transaction() as db:
            if self._owns(db, job_id, worker):
                steps = json.loads(db.execute("SELECT steps FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])
                db.execute("UPDATE jobs SET steps = ? WHERE id = ?", (json.dumps(steps + [record]), job_id))
                self._event(db, job_id, "step", {**record, "status": "finished"})

    def finish(self, job_id: str, worker: str, status: str, error: str | None = None,
               has_audio: bool | None = None) -> bool:
        """End a job this worker still holds; False when it no longer does (nothing changes)."""
        with self._transaction() as db:
            if not self._owns(db, job_id, worker):
                return False
            self._set_final(db, job_id, status, error, has_audio)
            return True

    def requeue(self, job_id: str, worker: str, reason: str) -> None:
        """Put a job this worker holds back in the queue (its server is stopping): an orderly stop
        does not count as one of the job's attempts."""
        with self._transaction() as db:
            if self._owns(db, job_id, worker):
                db.execute("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?", (job_id,))
                self._requeue(db, job_id, reason)

    def requeue_orphans(self) -> int:
        """Single box, on start: jobs left running by the previous process go back in the queue."""
        assert self.exclusive, "only the server that holds the data directory alone may re-queue"
        with self._transaction() as db:
            ids = [row[0] for row in db.execute("SELECT id FROM jobs WHERE status = 'running'").fetchall()]
            for job_id in ids:
                self._requeue(db, job_id, "the server restarted")
        for path in self.jobs_dir.iterdir():  # folders of submits that crashed before their insert
            if JOB_ID.match(path.name) and self.get(path.name) is None:
                shutil.rmtree(path, ignore_errors=True)
        return len(ids)

    # -- client actions ------------------------------------------------------------------------

    def cancel(self, job_id: str) -> str | None:
        """Cancel: a queued job at once, a running one at its worker's next check. Returns the status
        after the call (None: no such job)."""
        with self._transaction() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row[0] == "queued":
                self._set_final(db, job_id, "cancelled", "cancelled by request", None)
                return "cancelled"
            if row[0] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return row[0]

    def delete(self, job_id: str) -> None:
        """Remove a finished job: its row, its events, its folder."""
        with self._transaction() as db:
            db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ? AND status IN ('done', 'failed', 'cancelled')", (job_id,))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # -- helpers (inside a transaction) --------------------------------------------------------

    @staticmethod
    def _owns(db: sqlite3.Connection, job_id: str, worker: str) -> bool:
        row = db.execute("SELECT status, worker FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and row[0] == "running" and row[1] == worker

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: str, kind: str, data: dict) -> None:
        db.execute("INSERT INTO events (job_id, kind, data) VALUES (?, ?, ?)", (job_id, kind, json.dumps(data)))

    def _set_final(self, db: sqlite3.Connection, job_id: str, status: str, error: str | None,
                   has_audio: bool | None) -> None:
        assert status in TERMINAL, status
        db.execute("UPDATE jobs SET status = ?, error = ?, has_audio = ?, finished = ?, lease_until = NULL "
                   "WHERE id = ?", (status, error, has_audio, time.time(), job_id))
        self._event(db, job_id, "status", {"status": status, **({"error": error} if error else {})})

    def _requeue(self, db: sqlite3.Connection, job_id: str, reason: str) -> None:
        if db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]:
            self._set_final(db, job_id, "cancelled", "cancelled by request", None)
            return
        db.execute("UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL, started = NULL "
                   "WHERE id = ?", (job_id,))
        self._event(db, job_id, "status", {"status": "queued", "reason": reason})


def _job(row: sqlite3.Row) -> Job:
    return Job(id=row["id"], status=row["status"], options=json.loads(row["options"]), filename=row["filename"],
               input=row["input"], created=row["created"], started=row["started"], finished=row["finished"],
               error=row["error"], steps=json.loads(row["steps"]), attempts=row["attempts"], worker=row["worker"],
               cancel_requested=bool(row["cancel_requested"]),
               has_audio=None if row["has_audio"] is None else bool(row["has_audio"]))
