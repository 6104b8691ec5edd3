"""Read logs from Parquet or CSV/TSV as Arrow tables, streaming in chunks.

Parquet is read row group by row group (``ParquetFile.iter_batches``), so a log larger than
memory can be fitted and trained on chunk by chunk. Every problem is reported with the file and
the column.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from twotower.errors import DataError

PARQUET_SUFFIXES = {".parquet", ".pq"}
DELIMITED_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".inter": "\t"}


@dataclass
class TableSource:
    """A tabular file on disk: its schema, and chunked reads of some of its columns."""

    path: Path
    #: bytes per CSV block; column types are inferred from the first block
    csv_block_size: int = 1 << 24

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.exists():
            raise DataError(f"{self.path}: file not found")
        if self.path.is_dir():
            raise DataError(f"{self.path}: is a folder, expected a Parquet or CSV/TSV file")
        if self.path.stat().st_size == 0:
            raise DataError(f"{self.path}: the file is empty")
        suffix = self.path.suffix.lower()
        if suffix not in PARQUET_SUFFIXES and suffix not in DELIMITED_SUFFIXES:
            raise DataError(f"{self.path}: unknown file type {suffix!r}; expected one of "
                            f"{sorted(PARQUET_SUFFIXES | set(DELIMITED_SUFFIXES))}")
        self.is_parquet = suffix in PARQUET_SUFFIXES
        try:
            if self.is_parquet:
                # pages a writer checksummed are verified: a flipped byte is an error, not a value
                self._pq = pq.ParquetFile(self.path, page_checksum_verification=True)
                self.schema = self._pq.schema_arrow
            else:
                # the same block size as the reads, so the schema checked is the one read
                self.schema = self._csv_reader().schema
            self.schema.names  # noqa: B018 — a header that is not UTF-8 fails here, not later
        except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
            raise DataError(f"{self.path}: cannot be read as "
                            f"{'Parquet' if self.is_parquet else 'CSV/TSV'}: {err}") from None
        names = list(self.schema.names)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataError(f"{self.path}: column{'s' if len(twice) > 1 else ''} "
                            f"{', '.join(map(repr, twice))} appear{'' if len(twice) > 1 else 's'} "
                            "more than once; every column name must be unique")

    def _csv_reader(self) -> pacsv.CSVStreamingReader:
        delimiter = DELIMITED_SUFFIXES[self.path.suffix.lower()]
        return pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=self.csv_block_size),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
        )

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def require(self, columns: Sequence[str], why: str = "") -> None:
        missing = [c for c in columns if c not in self.schema.names]
        if missing:
            raise DataError(
                f"{self.path}: missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(c) for c in missing)}{f' ({why})' if why else ''}; "
                f"the file has: {', '.join(self.schema.names)}")

    def require_fields(self, asked_by: dict[str, str]) -> None:
        """Like ``require``, naming the config field that asked for each missing column
        (``{"search_id": "eval.group_by"}``), so the user edits the right line."""
        missing = {c: f for c, f in asked_by.items() if c not in self.schema.names}
        if missing:
            what = "; ".join(f"{c!r} (asked for by {f})" for c, f in missing.items())
            raise DataError(f"{self.path}: missing column{'s' if len(missing) > 1 else ''} {what}; "
                            f"the file has: {', '.join(self.schema.names)}")

    def iter_chunks(self, columns: Sequence[str] | None = None,
                    chunk_rows: int = 262_144) -> Iterator[pa.Table]:
        """Yield the file as tables of at most ``chunk_rows`` rows (row groups stream from disk)."""
        if columns is not None:
            self.require(columns)
            columns = list(dict.fromkeys(columns))
        if self.is_parquet:
            batches = self._pq.iter_batches(batch_size=chunk_rows, columns=columns)
            while True:
                try:
                    rb = next(batches)
                except StopIteration:
                    return
                except (pa.ArrowException, OSError) as err:
                    raise DataError(self._corruption(err, columns)) from None
                yield pa.Table.from_batches([rb])
        reader = self._csv_reader()
        pending: list[pa.RecordBatch] = []
        rows = 0
        for rb in _csv_batches(reader, self.path):
            if columns is not None:
                rb = rb.select(columns)
            pending.append(rb)
            rows += rb.num_rows
            if rows >= chunk_rows:
                yield pa.Table.from_batches(pending)
                pending, rows = [], 0
        if pending:
            yield pa.Table.from_batches(pending)

    def _corruption(self, err: Exception, columns: Sequence[str] | None) -> str:
        """Where a Parquet read failed: the first (row group, column) that does not decode."""
        for rg in range(self._pq.num_row_groups):
            for col in columns or self.columns:
                try:
                    self._pq.read_row_group(rg, columns=[col])
                except (pa.ArrowException, OSError) as col_err:
                    return (f"{self.path}: corrupt Parquet data in column {col!r}, row group {rg} "
                            f"of {self._pq.num_row_groups} ({col_err})")
        return f"{self.path}: corrupt Parquet data ({err})"

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        chunks = list(self.iter_chunks(columns))
        if not chunks:
            raise DataError(f"{self.path}: the file has no rows")
        table = pa.concat_tables(chunks) if len(chunks) > 1 else chunks[0]
        if table.num_rows == 0:
            raise DataError(f"{self.path}: the file has no rows")
        return table

    @property
    def num_rows(self) -> int | None:
        return self._pq.metadata.num_rows if self.is_parquet else None


def _csv_batches(reader: pacsv.CSVStreamingReader, path: Path) -> Iterator[pa.RecordBatch]:
    """The reader's batches; a value that does not parse as its column's type is a DataError."""
    while True:
        try:
            rb = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as err:
            raise DataError(f"{path}: {err} (column types are inferred from the first "
                            f"{TableSource.csv_block_size >> 20} MiB; a column whose values change "
                            "type later in the file must be fixed, or converted to Parquet)") from None
        yield rb


def filter_split(table: pa.Table, column: str | None, value: str | None, path: Path) -> pa.Table:
    """Keep the rows whose ``column`` equals ``value`` (no-op when either is None)."""
    if column is None or value is None:
        return table
    if column not in table.column_names:
        raise DataError(f"{path}: missing split column {column!r} (asked for by data.split_column)")
    return table.filter(pc.equal(table[column].cast(pa.string()), value))


def write_parquet(table: pa.Table, path: str | Path, row_group_size: int = 131_072) -> Path:
    """Write a table atomically (temporary name in the same folder, then rename)."""
    from twotower.run import atomic_write

    return atomic_write(path, lambda p: pq.write_table(table, p, row_group_size=row_group_size,
                                                       write_page_checksum=True))
