"""Reading store exports: encodings, headers, column mapping."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clm_core.errors import DataImportError
from clm_core.ingest.fields import Entity
from clm_core.suggest import did_you_mean

ENCODINGS = ("auto", "utf-8", "utf-8-sig", "gbk", "gb18030", "latin-1")


@dataclass
class RawTable:
    frame: pd.DataFrame  # one column per mapped field (stripped text, None when empty)
    extra: pd.DataFrame  # unmapped columns, kept as custom attributes
    rows: pd.Series  # spreadsheet row number of each record (the header is row 1)
    malformed: list[tuple[int, str]]  # (row, reason) for records that could not be split
    encoding: str
    source_columns: list[str]
    original: pd.DataFrame  # every source column, for the rejects file


def decode(path: Path, encoding: str) -> tuple[str, str]:
    """The file's text and the encoding used. ``auto``: UTF-8 (BOM or not), else GB18030."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataImportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    candidates = ["utf-8-sig", "gb18030"] if encoding == "auto" else [encoding]
    for enc in candidates:
        try:
            text = data.decode(enc)
            return (text[1:] if text.startswith("\ufeff") else text), (
                "utf-8" if enc == "utf-8-sig" else enc)
        except UnicodeDecodeError as exc:
            last = exc
        except LookupError as exc:
            raise DataImportError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}") from exc
    line = data[: last.start].count(b"\n") + 1
    raise DataImportError(f"{path}: cannot decode as {encoding} (byte {last.start}, line {line}); "
                          "try --encoding gb18030 for Chinese spreadsheet exports") from last


def normalize_header(name: str) -> str:
    return re.sub(r"[\s\-./]+", "_", name.strip().lower()).strip("_")


def resolve_columns(entity: Entity, header: list[str], mapping: dict[str, str],
                    path: Path) -> dict[str, int]:
    """Map each field to a source column index: --map first, then names and aliases."""
    norm = [normalize_header(h) for h in header]
    unknown = set(mapping) - {f.name for f in entity.fields}
    if unknown:
        name = sorted(unknown)[0]
        raise DataImportError(f"--map names unknown field {name!r}"
                              f"{did_you_mean(name, [f.name for f in entity.fields])}; fields of "
                              f"{entity.name}: {', '.join(f.name for f in entity.fields)}")
    found: dict[str, int] = {}
    taken: set[int] = set()
    for field in entity.fields:
        if field.name in mapping:
            src = mapping[field.name]
            if src not in header and normalize_header(src) not in norm:
                raise DataImportError(f"{path}: --map {field.name}={src}: no column {src!r}"
                                      f"{did_you_mean(src, header)}; columns: {', '.join(header)}")
            idx = header.index(src) if src in header else norm.index(normalize_header(src))
            found[field.name] = idx
            taken.add(idx)
    for field in entity.fields:
        if field.name in found:
            continue
        for candidate in (field.name, *field.aliases):
            if candidate in norm and norm.index(candidate) not in taken:
                found[field.name] = norm.index(candidate)
                taken.add(found[field.name])
                break
    missing = [f for f in entity.fields if f.required and f.name not in found]
    if missing:
        f = missing[0]
        hint = did_you_mean(f.name, header) or did_you_mean(f.aliases[0] if f.aliases else f.name, norm)
        raise DataImportError(
            f"{path}: missing required column {f.name!r} for {entity.name} (also accepted: "
            f"{', '.join(f.aliases[:4]) or 'none'}){hint}; found columns: {', '.join(header)}; "
            f"map one with --map {f.name}=COLUMN")
    return found


def read_table(path: Path, entity: Entity, *, encoding: str = "auto",
               mapping: dict[str, str] | None = None, delimiter: str | None = None) -> RawTable:
    text, used = decode(path, encoding)
    if not text.strip():
        raise DataImportError(f"{path}: the file is empty")
    if delimiter is None:
        first = text.split("\n", 1)[0]
        delimiter = max([",", ";", "\t", "|"], key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader)
    columns = resolve_columns(entity, header, mapping or {}, path)
    width = len(header)
    records: list[list[str]] = []
    rows: list[int] = []
    malformed: list[tuple[int, str]] = []
    try:
        for n, record in enumerate(reader, start=2):
            if len(record) == width:
                records.append(record)
                rows.append(n)
            elif not any(cell.strip() for cell in record):
                continue  # blank line
            else:
                malformed.append((n, f"expected {width} fields, found {len(record)}"))
    except csv.Error as exc:
        raise DataImportError(f"{path}: line {reader.line_num}: {exc}") from exc
    original = pd.DataFrame(records, columns=_unique(header), dtype=object)
    stripped = original.apply(lambda s: s.str.strip()).replace("", None)
    frame = pd.DataFrame({name: stripped.iloc[:, idx] for name, idx in columns.items()},
                         index=stripped.index)
    extra_idx = [i for i in range(width) if i not in columns.values()]
    extra = stripped.iloc[:, extra_idx]
    extra.columns = [normalize_header(header[i]) or f"column_{i + 1}" for i in extra_idx]
    return RawTable(frame, extra, pd.Series(rows, index=stripped.index), malformed, used,
                    header, original)


def _unique(header: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for h in header:
        seen[h] = seen.get(h, 0) + 1
        out.append(h if seen[h] == 1 else f"{h}.{seen[h]}")
    return out
