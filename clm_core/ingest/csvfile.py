"""Reading store exports: encodings, headers, column mapping."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clm_core.errors import DataImportError
from clm_core.ingest.fields import Entity
from clm_core.suggest import did_you_mean

ENCODINGS = ("auto", "utf-8", "utf-8-sig", "utf-16", "gbk", "gb18030", "big5", "cp1252",
             "latin-1")
# Share of a file's non-ASCII characters that must be common simplified Chinese (GB2312) for
# bytes that decode as GBK to be read as GBK: Western text in a single-byte code page decodes
# as GBK too, but into rare characters.
_GBK_COMMON_SHARE = 0.9
_SAMPLE_CHARS = 200_000

@dataclass(frozen=True)
class Malformed:
    """A record with the wrong number of fields, its cells fitted to the header's width (the
    surplus joined into the last cell), so the rejects file keeps what it said."""

    row: int
    reason: str
    cells: tuple[str, ...]

    @classmethod
    def of(cls, row: int, cells: list[str], width: int, delimiter: str) -> "Malformed":
        fitted = cells[: width - 1] + [delimiter.join(cells[width - 1:])] if len(cells) > width \
            else cells + [""] * (width - len(cells))
        return cls(row, f"expected {width} fields, found {len(cells)}", tuple(fitted))


@dataclass
class RawTable:
    frame: pd.DataFrame  # one column per mapped field (stripped text, missing when empty)
    extra: pd.DataFrame  # unmapped columns, kept as custom attributes
    rows: pd.Series  # spreadsheet row number of each record (the header is row 1)
    malformed: list[Malformed]  # records with the wrong number of fields
    encoding: str
    source_columns: list[str]
    original: pd.DataFrame  # every source column, for the rejects file
    unknown_columns: list[str]  # source columns that match no field, as written in the header


def decode(path: Path, encoding: str) -> tuple[str, str]:
    """The file's text and the encoding used.

    ``auto`` tries, in order: a UTF-16 byte order mark (Excel's "Unicode text"), UTF-8 (with or
    without BOM), GBK when the text it gives is common simplified Chinese, GB18030, and last
    Windows-1252 (Western European spreadsheets), which decodes anything.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataImportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if encoding == "auto":
        return _detect(data)
    try:
        text = data.decode(encoding)
    except LookupError as exc:
        raise DataImportError(f"unknown encoding {encoding!r}; use one of "
                              f"{', '.join(ENCODINGS)}") from exc
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataImportError(f"{path}: cannot decode as {encoding} (byte {exc.start}, line "
                              f"{line}); try --encoding auto, or gb18030 for Chinese spreadsheet "
                              "exports") from exc
    return _without_bom(text), "utf-8" if encoding == "utf-8-sig" else encoding


def _without_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def _detect(data: bytes) -> tuple[str, str]:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return _without_bom(data.decode("utf-16")), "utf-16"
        except UnicodeDecodeError:
            pass
    try:
        return _without_bom(data.decode("utf-8-sig")), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gbk")
        if _common_chinese(text):
            return text, "gbk"
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gb18030")
        if _common_chinese(text):
            return text, "gb18030"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
        return data.decode("latin-1"), "latin-1"


def _common_chinese(text: str) -> bool:
    """Whether the non-ASCII characters (of a sample) are mostly common simplified Chinese
    or full-width punctuation, as in a real Chinese export."""
    rare = 0
    chars = [c for c in set(text[:_SAMPLE_CHARS]) if ord(c) > 127]
    for c in chars:
        try:
            c.encode("gb2312")
        except UnicodeEncodeError:
            rare += 1
    return not chars or rare <= (1 - _GBK_COMMON_SHARE) * len(chars)


_UNIT_SUFFIX = re.compile(r"\s*[(（\[【][^)）\]】]*[)）\]】]\s*$")


def normalize_header(name: str) -> str:
    """Lower case, a unit in brackets dropped (``金额(元)``, ``Amount (USD)``), runs of spaces
    and punctuation as ``_``."""
    name = _UNIT_SUFFIX.sub("", name.strip()) or name
    return re.sub(r"[\s\-./:：、]+", "_", name.strip().lower()).strip("_")


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
        hint = did_you_mean(f.name, header) or did_you_mean(
            f.aliases[0] if f.aliases else f.name, norm
        )
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
    body_at = _header_end(text)
    if delimiter is None:
        delimiter = max([",", ";", "\t", "|"], key=text[:body_at].count)
    header = next(csv.reader([text[:body_at].rstrip("\r\n")], delimiter=delimiter))
    columns = resolve_columns(entity, header, mapping or {}, path)
    parsed = _split_fast(text, body_at, delimiter, len(header))
    if parsed is None:
        parsed = _split_exact(text, body_at, delimiter, len(header), path)
    original, rows, malformed = parsed
    original.columns = _unique(header)
    stripped = _stripped(original, text, delimiter)
    frame = pd.DataFrame({name: stripped.iloc[:, idx] for name, idx in columns.items()},
                         index=stripped.index)
    extra_idx = [i for i in range(len(header)) if i not in columns.values()]
    extra = stripped.iloc[:, extra_idx]
    extra.columns = [normalize_header(header[i]) or f"column_{i + 1}" for i in extra_idx]
    return RawTable(frame, extra, pd.Series(rows, index=stripped.index), malformed, used,
                    header, original, [header[i] or f"column {i + 1}" for i in extra_idx])


Split = tuple[pd.DataFrame, np.ndarray, list[Malformed]]  # records, row numbers, malformed


def _header_end(text: str) -> int:
    """Offset just past the header line (a header never spans lines)."""
    end = re.search(r"\r\n|\n|\r", text)
    return len(text) if end is None else end.end()


def _split_fast(text: str, body_at: int, delimiter: str, width: int) -> Split | None:
    """pandas' C parser, with field counts per line taken from the raw text. Only for files
    without quotes or bare carriage returns, where every line is one record; otherwise None."""
    body = text[body_at:]
    if '"' in body or ("\r" in body and "\r\n" not in body):
        return None
    if not body.strip():
        return pd.DataFrame(columns=range(width), dtype=object), np.array([], dtype=np.int64), []
    raw = np.frombuffer(body.encode("utf-8"), dtype=np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    if len(raw) and raw[-1] != ord("\n"):
        ends = np.append(ends, len(raw))
    starts = np.r_[0, ends[:-1] + 1]
    delims = np.flatnonzero(raw == ord(delimiter))
    fields = np.searchsorted(delims, ends) - np.searchsorted(delims, starts) + 1
    lines = np.arange(2, len(ends) + 2)
    frame = pd.read_csv(io.StringIO(body), sep=delimiter, header=None, names=range(width),
                        dtype=str, na_values=[""], keep_default_na=False, skip_blank_lines=False,
                        quoting=csv.QUOTE_NONE, on_bad_lines="skip", engine="c")
    kept = fields <= width  # lines the parser returns; longer ones it skips
    if len(frame) != int(kept.sum()):
        return None
    blank = _blank_lines(raw, starts, ends, fields)
    good = (fields == width) & ~blank
    bad = ~good & ~blank
    malformed = [Malformed.of(int(lines[i]), _line(raw, starts[i], ends[i]).rstrip("\r")
                              .split(delimiter), width, delimiter) for i in np.flatnonzero(bad)]
    frame = frame[good[kept]].reset_index(drop=True)
    return frame, lines[good], malformed


def _blank_lines(raw: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 fields: np.ndarray) -> np.ndarray:
    """Lines with nothing but white space (only one-field lines can be; there are few)."""
    blank = np.zeros(len(starts), dtype=bool)
    for i in np.flatnonzero(fields == 1):
        blank[i] = not _line(raw, starts[i], ends[i]).strip()
    return blank


def _line(raw: np.ndarray, start: int, end: int) -> str:
    return raw[start:end].tobytes().decode("utf-8")


def _split_exact(text: str, body_at: int, delimiter: str, width: int, path: Path) -> Split:
    """Python's csv module: quoted fields, delimiters and line breaks inside quotes."""
    reader = csv.reader(io.StringIO(text[body_at:], newline=""), delimiter=delimiter)
    try:
        records = list(reader)
    except csv.Error as exc:
        raise DataImportError(f"{path}: line {reader.line_num + 1}: {exc}") from exc
    records_ok, rows, malformed = [], [], []
    for n, record in enumerate(records, start=2):
        if len(record) == width:
            records_ok.append(record)
            rows.append(n)
        elif any(cell.strip() for cell in record):
            malformed.append(Malformed.of(n, record, width, delimiter))
    frame = pd.DataFrame(records_ok, columns=range(width), dtype=object).replace("", None)
    return frame, np.array(rows, dtype=np.int64), malformed


def _has_edge_space(text: str, delimiter: str) -> bool:
    """Whether white space touches a delimiter, quote or line end anywhere (one vectorised
    pass over the bytes; cells then need stripping)."""
    if "\u3000" in text or "\xa0" in text:  # ideographic and no-break spaces: just strip
        return True
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    spaces = np.flatnonzero((raw == ord(" ")) | ((raw == ord("\t")) & (delimiter != "\t")))
    if not len(spaces):
        return False
    edge = np.zeros(256, dtype=bool)
    edge[[ord(delimiter), ord('"'), ord("\n"), ord("\r")]] = True
    padded = np.r_[ord("\n"), raw, ord("\n")]  # the text's ends count as line ends
    return bool((edge[padded[spaces]] | edge[padded[spaces + 2]]).any())


_QUOTED_FORMULA = re.compile(r"^'(?=[=+\-@\t\r])")


def _stripped(original: pd.DataFrame, text: str, delimiter: str) -> pd.DataFrame:
    """Cells without surrounding white space, missing when empty (as they are read), and
    without the apostrophe a rejects file puts before ``= + - @`` (so a fixed rejects file
    imports as it was written). Both cost seconds on big files, so they happen only when the
    text has such a cell edge or apostrophe."""
    out = original
    if _has_edge_space(text, delimiter):
        out = out.astype(object).apply(lambda s: s.str.strip())
        out = out.where(out.notna() & (out != ""), None)
    if re.search(r"'[=+\-@]", text):
        out = out.astype(object).apply(lambda s: s.str.replace(_QUOTED_FORMULA, "", regex=True))
    return out


def _unique(header: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for h in header:
        seen[h] = seen.get(h, 0) + 1
        out.append(h if seen[h] == 1 else f"{h}.{seen[h]}")
    return out
