"""The web page's database: users (per hospital, with roles), sessions, the studies uploaded through the page or
seen on the line, their diagnoses and the cardiologists' reads.

Two engines, one schema and one set of statements (plain SQL both take; only the placeholder and two column types
differ):
- SQLite, the embedded default: one file, in WAL mode, backed up with SQLite's online backup.
- PostgreSQL in production, given as a `postgresql://` address (psycopg 3 over libpq): the address carries no
  password; libpq takes it from PGPASSFILE or PGPASSWORD, and TLS from PGSSLMODE and its kin. Backed up with
  pg_dump when it is installed beside the page; a managed server's own backups serve otherwise.

Passwords are kept as scrypt hashes (hashlib), sessions as random tokens with an expiry; a user of one hospital
reads only that hospital's studies: every query of studies and reads is filtered by hospital here, not by the page.
"""

import hashlib
import hmac
import secrets
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rhd.local.security import write_private

ROLES = ("clinician", "operator", "researcher")
# The "hospital" of the studies a page outside the home region files: it holds no link keyring, so it knows neither
# a study's hospital nor its ids, only its pseudonym.
PSEUDONYMOUS = "pseudonymous"
SESSION_S = 8 * 3600.0  # a session expires after a working day
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
  name TEXT PRIMARY KEY,
  hospital TEXT NOT NULL,
  role TEXT NOT NULL,
  salt BLOB NOT NULL,
  pw_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
  token TEXT PRIMARY KEY,
  user_name TEXT NOT NULL REFERENCES users(name),
  expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
  hospital TEXT NOT NULL,
  study_id TEXT NOT NULL,
  accession TEXT NOT NULL DEFAULT '',
  pseudonym TEXT NOT NULL DEFAULT '',
  uploaded_by TEXT NOT NULL DEFAULT '',
  uploaded_at REAL NOT NULL,
  label TEXT NOT NULL DEFAULT '',
  completeness TEXT NOT NULL DEFAULT '',
  diagnosed_at REAL,
  diagnosis BLOB,
  PRIMARY KEY (hospital, study_id)
);
CREATE TABLE IF NOT EXISTS reads (
  hospital TEXT NOT NULL,
  study_id TEXT NOT NULL,
  reader TEXT NOT NULL,
  suggested TEXT NOT NULL,
  final_label TEXT NOT NULL,
  agrees INTEGER NOT NULL,
  note TEXT NOT NULL DEFAULT '',
  read_at REAL NOT NULL,
  PRIMARY KEY (hospital, study_id, reader)
);
"""


class AuthError(Exception):
    """Wrong name or password, or an expired session."""


@dataclass(frozen=True)
class User:
    name: str
    hospital: str
    role: str


@dataclass(frozen=True)
class Study:
    hospital: str
    study_id: str
    accession: str
    pseudonym: str
    uploaded_by: str
    uploaded_at: float
    label: str
    completeness: str
    diagnosed_at: float | None
    diagnosis: bytes | None


@dataclass(frozen=True)
class Read:
    reader: str
    suggested: str
    final_label: str
    agrees: bool
    note: str
    read_at: float


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)


def is_server_address(where: str | Path) -> bool:
    """Whether `where` names a PostgreSQL server rather than an SQLite file."""
    return str(where).startswith(("postgresql://", "postgres://"))


def backup_path(where: str | Path, workdir: Path) -> Path:
    """Where the page's backups go: beside an SQLite file; a PostgreSQL dump into the stack's working directory."""
    return workdir / "web-db.backup.pgdump" if is_server_address(where) else Path(where).with_suffix(".backup.sqlite")


class _Connection:
    """One connection shared by the app's threads, each statement under a lock (SQLite serialises writes anyway;
    the page's load is a few requests a second). Statements are written once with `?` placeholders."""

    def __init__(self, where: str | Path) -> None:
        self.server = is_server_address(where)
        if self.server:
            import psycopg

            self._db: Any = psycopg.connect(str(where), autocommit=True)
            schema = SCHEMA.replace(" BLOB", " BYTEA").replace(" REAL", " DOUBLE PRECISION")
        else:
            path = Path(where)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            schema = SCHEMA
        self.lock = threading.Lock()
        with self.lock:
            if self.server:
                self._db.execute(schema)  # several statements, no parameters: one simple query
            else:
                self._db.executescript(schema)  # its own transaction

    def execute(self, sql: str, args: tuple | list = ()) -> Any:
        """Run one statement (the caller holds the lock); its cursor."""
        return self._db.execute(sql.replace("?", "%s") if self.server else sql, args)

    def close(self) -> None:
        self._db.close()


class Database:
    def __init__(self, where: str | Path) -> None:
        """`where`: an SQLite file's path, or a PostgreSQL server's `postgresql://` address."""
        self.where = where
        self._conn = _Connection(where)
        self._lock = self._conn.lock

    @contextmanager
    def _tx(self) -> Iterator[_Connection]:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def backup(self, target: Path) -> Path | None:
        """A consistent copy of the whole database while it is in use: SQLite's online backup, or pg_dump's custom
        format for PostgreSQL (None when pg_dump is not installed here: the server's own backups serve)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self._conn.server:
            pg_dump = shutil.which("pg_dump")
            if pg_dump is None:
                return None
            partial = target.with_name(target.name + ".partial")
            subprocess.run([pg_dump, "--format=custom", f"--file={partial}", str(self.where)], check=True)
            partial.replace(target)
            return target
        copy = sqlite3.connect(target)
        try:
            with self._lock:
                self._conn._db.backup(copy)
        finally:
            copy.close()
        return target

    # -- users and sessions ------------------------------------------------------------------
    def user_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def add_user(self, name: str, hospital: str, role: str, password: str) -> User:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        if not name or not hospital:
            raise ValueError("a user needs a name and a hospital")
        if len(password) < 8:
            raise ValueError("a password has at least 8 characters")
        salt = secrets.token_bytes(16)
        with self._tx() as db:
            db.execute(
                "INSERT INTO users (name, hospital, role, salt, pw_hash) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET hospital=excluded.hospital, role=excluded.role, "
                "salt=excluded.salt, pw_hash=excluded.pw_hash",
                (name, hospital, role, salt, _hash(password, salt)),
            )
        return User(name, hospital, role)

    def sign_in(self, name: str, password: str, now: float | None = None) -> str:
        """A new session's token, or AuthError (the same for an unknown name and a wrong password)."""
        with self._lock:
            row = self._conn.execute("SELECT salt, pw_hash FROM users WHERE name = ?", (name,)).fetchone()
        salt, expected = row if row else (b"\0" * 16, b"")
        given = _hash(password, salt)  # hashed whether or not the user exists: the time tells nothing
        if not row or not hmac.compare_digest(given, expected):
            raise AuthError("unknown user or wrong password")
        token = secrets.token_urlsafe(32)
        expires = (time.time() if now is None else now) + SESSION_S
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE expires < ?", (time.time() if now is None else now,))
            db.execute("INSERT INTO sessions (token, user_name, expires) VALUES (?, ?, ?)", (token, name, expires))
        return token

    def session_user(self, token: str, now: float | None = None) -> User:
        with self._lock:
            row = self._conn.execute(
                "SELECT u.name, u.hospital, u.role, s.expires FROM sessions s JOIN users u ON u.name = s.user_name "
                "WHERE s.token = ?",
                (token,),
            ).fetchone()
        if row is None or row[3] < (time.time() if now is None else now):
            raise AuthError("session expired: sign in again")
        return User(row[0], row[1], row[2])

    def sign_out(self, token: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE token = ?", (token,))

    # -- studies -----------------------------------------------------------------------------
    def uploaded(self, hospital: str, study_id: str, user: str, at: float | None = None) -> None:
        """A study sent through the page (sent again: its earlier diagnosis is cleared, a new one will come)."""
        at = time.time() if at is None else at
        with self._tx() as db:
            db.execute(
                "INSERT INTO studies (hospital, study_id, uploaded_by, uploaded_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(hospital, study_id) DO UPDATE SET uploaded_by=excluded.uploaded_by, "
                "uploaded_at=excluded.uploaded_at, label='', completeness='', diagnosed_at=NULL, diagnosis=NULL",
                (hospital, study_id, user, at),
            )

    def diagnosed(
        self,
        hospital: str,
        study_id: str,
        pseudonym: str,
        accession: str,
        label: str,
        completeness: str,
        diagnosis: bytes,
        at: float,
    ) -> None:
        """A diagnosis read off the line (a study uploaded elsewhere, by a hospital's own client, is added too)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO studies (hospital, study_id, accession, pseudonym, uploaded_at, label, completeness, "
                "diagnosed_at, diagnosis) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(hospital, study_id) DO UPDATE SET accession=excluded.accession, "
                "pseudonym=excluded.pseudonym, label=excluded.label, completeness=excluded.completeness, "
                "diagnosed_at=excluded.diagnosed_at, diagnosis=excluded.diagnosis",
                (hospital, study_id, accession, pseudonym, at, label, completeness, at, diagnosis),
            )

    def study(self, hospital: str, study_id: str) -> Study | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM studies WHERE hospital = ? AND study_id = ?", (hospital, study_id)
            ).fetchone()
        return Study(*row) if row else None

    def studies(
        self,
        hospital: str,
        label: str = "",
        completeness: str = "",
        since: float | None = None,
        until: float | None = None,
    ) -> list[Study]:
        """A hospital's studies, newest first, filtered by label ("pending": not yet diagnosed), completeness and
        upload time."""
        sql, args = "SELECT * FROM studies WHERE hospital = ?", [hospital]
        if label == "pending":
            sql += " AND diagnosed_at IS NULL"
        elif label:
            sql, args = sql + " AND label = ?", [*args, label]
        if completeness:
            sql, args = sql + " AND completeness = ?", [*args, completeness]
        if since is not None:
            sql, args = sql + " AND uploaded_at >= ?", [*args, since]
        if until is not None:
            sql, args = sql + " AND uploaded_at < ?", [*args, until]
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY uploaded_at DESC, study_id", args).fetchall()
        return [Study(*row) for row in rows]

    # -- reads -------------------------------------------------------------------------------
    def read(self, hospital: str, study_id: str, reader: str, final_label: str, note: str = "") -> Read:
        """A cardiologist's final read of a diagnosed study: the suggestion confirmed, or overridden."""
        study = self.study(hospital, study_id)
        if study is None or study.diagnosed_at is None:
            raise ValueError("only a diagnosed study of your hospital can be read")
        suggested = study.label
        read = Read(reader, suggested, final_label, final_label == suggested, note, time.time())
        with self._tx() as db:
            db.execute(
                "INSERT INTO reads (hospital, study_id, reader, suggested, final_label, agrees, note, read_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hospital, study_id, reader) DO UPDATE SET "
                "suggested=excluded.suggested, final_label=excluded.final_label, agrees=excluded.agrees, "
                "note=excluded.note, read_at=excluded.read_at",
                (hospital, study_id, reader, suggested, final_label, int(read.agrees), note, read.read_at),
            )
        return read

    def reads(self, hospital: str, study_id: str) -> list[Read]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT reader, suggested, final_label, agrees, note, read_at FROM reads "
                "WHERE hospital = ? AND study_id = ? ORDER BY read_at",
                (hospital, study_id),
            ).fetchall()
        return [Read(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows]

    def agreement(self, hospital: str | None = None) -> dict[str, float | int]:
        """The suggestions' real-world performance on the confirmed reads: how many were read, how many agreed."""
        sql, args = "SELECT COUNT(*), COALESCE(SUM(agrees), 0) FROM reads", []
        if hospital is not None:
            sql, args = sql + " WHERE hospital = ?", [hospital]
        with self._lock:
            n, agreed = self._conn.execute(sql, args).fetchone()
        return {"reads": n, "agreed": agreed, "agreement": agreed / n if n else float("nan")}


def first_users(where: str | Path, hospital: str, out: Path) -> list[tuple[str, str, str]]:
    """A new database gets one user per role for the first hospital, with random passwords written (0600) to `out`
    for the person who started the stack (`rhd up`); a database with users is left as it is."""
    db = Database(where)
    try:
        if db.user_count():
            return []
        made = []
        for role in ROLES:
            name, password = f"{role}-{hospital}".lower(), secrets.token_urlsafe(12)
            db.add_user(name, hospital, role, password)
            made.append((name, role, password))
    finally:
        db.close()
    write_private(out, "".join(f"{name}\t{role}\t{password}\n" for name, role, password in made).encode())
    return made
