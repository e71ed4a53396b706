"""Where ingestion reads rows from: a CSV file or any SQLAlchemy URL with a table or a query.

A source yields ``(row number, values)`` with values as text in header order (``None`` = SQL NULL);
row numbers count data rows from 1 (the CSV header is not a row). Structural problems — no file,
not UTF-8, no header, duplicate or blank header names, a file over the size limit, a broken quote —
raise one-sentence :class:`ConfigError` naming the row where one applies; a row with the wrong
number of fields is yielded with ``values=None`` so the batch is rejected with every bad row listed.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Generator, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa

from tessera.core.errors import ConfigError

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB; larger files are split or allowed explicitly
Row = tuple[int, list[str | None] | None]


class Source(Protocol):
    label: str

    @property
    def columns(self) -> tuple[str, ...]: ...

    def rows(self, skip: int = 0) -> Iterator[Row]: ...

    def digest(self) -> str: ...


def _check_header(header: list[str], label: str) -> tuple[str, ...]:
    names = [h.strip() for h in header]
    if not names or all(not n for n in names):
        raise ConfigError(f"{label} is empty: it needs a header line naming its columns")
    if any(not n for n in names):
        raise ConfigError(f"{label} has a column without a name in its header")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{label} has duplicate columns in its header: {', '.join(twice)}")
    return tuple(names)


class CsvSource:
    """A UTF-8 CSV file (a BOM is allowed) with one header line; refused above ``max_bytes``."""

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise ConfigError(f"data file {self.path} does not exist") from None
        if not self.path.is_file():
            raise ConfigError(f"{self.path} is not a file")
        if size == 0:
            raise ConfigError(f"{self.label} is empty: it needs a header line naming its columns")
        if size > max_bytes:
            raise ConfigError(
                f"{self.label} is {size / 1e9:.1f} GB, above the limit of {max_bytes / 1e9:.1f} GB; "
                "split it into smaller files or raise the limit with --max-bytes"
            )
        try:
            header = next(csv.reader(self._lines()), None)
        except csv.Error as exc:
            raise ConfigError(f"{self.label} has a malformed header line ({_csv_problem(exc)})") from None
        if header is None:
            raise ConfigError(f"{self.label} is empty: it needs a header line naming its columns")
        self._columns = _check_header(header, self.label)

    def _lines(self) -> Generator[str, None, None]:
        # Decoded line by line (not by the 8 KB chunks of a text file) so the error names its line.
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise ConfigError(
                        f"{self.label} is not UTF-8 text at line {number}; save it as UTF-8"
                    ) from None

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    def rows(self, skip: int = 0) -> Iterator[Row]:
        width = len(self._columns)
        number = 0
        lines = self._lines()
        reader = csv.reader(lines, strict=True)
        try:
            next(reader, None)
            for record in reader:
                if not record:
                    continue  # a blank line carries no row
                number += 1
                if number > skip:
                    yield number, (list(record) if len(record) == width else None)
        except csv.Error as exc:
            raise ConfigError(
                f"{self.label} is malformed CSV at row {number + 1} ({_csv_problem(exc)})"
            ) from None
        finally:
            lines.close()

    def digest(self) -> str:
        hasher = hashlib.sha256()
        with self.path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        return hasher.hexdigest()


def _csv_problem(exc: csv.Error) -> str:
    """What the csv module's error means, in a sentence that names no value."""
    text = str(exc)
    if "field larger than field limit" in text:
        return f"a value longer than {csv.field_size_limit():,} characters"
    if "NUL" in text:
        return "a NUL byte"
    if "quote" in text or "delimiter" in text or "EOF" in text:
        return "a quote that is not closed or is followed by text"
    return "unreadable CSV"


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


class SqlSource:
    """Rows of a table or a read-only query at any SQLAlchemy URL (read in one streamed pass)."""

    def __init__(self, url: str, *, table: str | None = None, query: str | None = None) -> None:
        if (table is None) == (query is None):
            raise ConfigError("give exactly one of --table or --query with --source-url")
        try:
            self._engine = sa.create_engine(url)
        except (sa.exc.ArgumentError, ImportError):
            raise ConfigError("the source URL is not a SQLAlchemy database URL this node can open") from None
        self.label = f"table {table}" if table is not None else "the source query"
        if table is not None:
            self._statement: sa.Executable = sa.select(sa.text("*")).select_from(sa.table(table))
        else:
            self._statement = sa.text(query or "")
        where = _where(self._engine.url)
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            self._engine.dispose()
            hint = (
                "does the file exist, and may this user read it?"
                if self._engine.url.get_backend_name() == "sqlite"
                else "is it running, and are the address, name and credentials right?"
            )
            kind = type(getattr(exc, "orig", None) or exc).__name__
            raise ConfigError(f"cannot connect to the source database {where} ({kind}): {hint}") from None
        try:
            if table is not None and not sa.inspect(conn).has_table(table):
                raise ConfigError(f"the source database {where} has no table {table!r}")
            keys = list(conn.execute(self._statement).keys())
        except sa.exc.SQLAlchemyError:
            raise ConfigError(f"{self.label} cannot be read from the source database {where}") from None
        finally:
            conn.close()
        self._columns = _check_header([str(k) for k in keys], self.label)

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    def rows(self, skip: int = 0) -> Iterator[Row]:
        with self._engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(self._statement)
            for number, record in enumerate(result, start=1):
                if number > skip:
                    yield number, [_text(v) for v in record]

    def digest(self) -> str:
        hasher = hashlib.sha256(self.label.encode())
        for _, values in self.rows():
            hasher.update(repr(values).encode())
        return hasher.hexdigest()

    def close(self) -> None:
        self._engine.dispose()


def _where(url: sa.URL) -> str:
    """The database a URL names, without its user or password."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite file {url.database or '(memory)'}"
    host = f"{url.host or 'localhost'}" + (f":{url.port}" if url.port else "")
    return f"{url.get_backend_name()} at {host}" + (f", database {url.database}" if url.database else "")
