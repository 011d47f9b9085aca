"""Vectorised row validation: each kind of column is cleaned for all rows at once.

Every check returns the cleaned column and, per row, the reason it is bad (None when good).
Expensive checks (email syntax, phone parsing, time zones) run once per distinct value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import phonenumbers
from email_validator import EmailNotValidError, validate_email

from clm_core.ingest.fields import Field

Checked = tuple[pd.Series, pd.Series]  # (clean values, reason or None)

_TRUE = {"1", "true", "t", "yes", "y", "on", "x", "是", "√", "ja", "oui", "si", "sí", "同意",
         "已同意", "订阅", "已订阅", "接受", "允许", "对", "有"}
_FALSE = {"0", "false", "f", "no", "n", "off", "否", "×", "nein", "non", "", "不同意", "未同意",
          "退订", "已退订", "未订阅", "不订阅", "拒绝", "不允许", "不接受", "无"}

# Order states as stores write them, by what they mean here: only ``completed`` orders are
# purchases (see ``lifecycle.features.NOT_PURCHASES``). Keys are lower case with spaces and
# hyphens as ``_``. Shopify, WooCommerce and Chinese store back-ends (Youzan, Taobao) included.
ORDER_STATUSES = {
    **dict.fromkeys((
        "completed", "complete", "paid", "processing", "shipped", "fulfilled", "delivered",
        "closed_won", "success", "successful", "done", "partially_refunded", "已完成", "完成",
        "已付款", "已支付", "待发货", "已发货", "待收货", "已收货", "已签收", "交易成功",
        "交易完成", "部分退款"), "completed"),
    **dict.fromkeys((
        "cancelled", "canceled", "void", "voided", "cancel", "已取消", "取消", "交易关闭",
        "已关闭", "已作废"), "cancelled"),
    **dict.fromkeys((
        "refunded", "returned", "refund", "已退款", "退款成功", "已退货", "全额退款"), "refunded"),
    **dict.fromkeys((
        "pending", "unpaid", "on_hold", "authorized", "awaiting_payment", "partially_paid",
        "draft", "待付款", "未付款", "等待付款", "待支付", "未支付"), "pending"),
    **dict.fromkeys(("failed", "declined", "支付失败", "付款失败"), "failed"),
}
# Currency names and signs that are not ISO 4217 codes. A bare yen sign is read as yuan: the
# stores that write it in a currency column are Chinese ones.
_CURRENCY_NAMES = {
    "rmb": "CNY", "人民币": "CNY", "元": "CNY", "¥": "CNY", "￥": "CNY", "cn¥": "CNY",
    "$": "USD", "us$": "USD", "美元": "USD", "€": "EUR", "欧元": "EUR", "£": "GBP",
    "英镑": "GBP", "日元": "JPY", "円": "JPY", "港币": "HKD", "港元": "HKD", "hk$": "HKD",
    "新台币": "TWD", "台币": "TWD", "nt$": "TWD", "韩元": "KRW", "₩": "KRW", "澳元": "AUD",
    "a$": "AUD", "加元": "CAD", "c$": "CAD", "新加坡元": "SGD", "s$": "SGD",
}
# The currency an amount's own sign or code names ("¥88", "12元", "USD 5"); ambiguous ones
# (a bare "$") name none.
_AMOUNT_CURRENCY = [(re.compile(p), code) for p, code in (
    (r"[¥￥元]|^\s*(?:CNY|RMB)|(?:CNY|RMB)\s*$", "CNY"), (r"€|^\s*EUR|EUR\s*$", "EUR"),
    (r"£|^\s*GBP|GBP\s*$", "GBP"), (r"US\$|^\s*USD|USD\s*$", "USD"))]
# A mainland Chinese mobile number written without its country code.
_CN_MOBILE = re.compile(r"(?:\+?86)?1[3-9]\d{9}")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z]{4})?(?:[-_](?:[A-Za-z]{2}|\d{3}))?")
_MONEY_NOISE = re.compile(r"[\s,$€£¥￥]|^(?:USD|EUR|GBP|CNY|RMB)|(?:USD|EUR|GBP|CNY|RMB|元)$")


def _no_reason(index: pd.Index) -> pd.Series:
    return pd.Series(None, index=index, dtype=object)


def _by_distinct(values: pd.Series, check: Callable[[str], tuple[object, str | None]]) -> Checked:
    """Run ``check`` once per distinct non-empty value and spread the results back."""
    present = values.notna()
    uniq = pd.unique(values[present])
    results = {v: check(v) for v in uniq}
    # Mapping through dicts is a hash lookup per row in C; a Python function per row is not.
    clean = values.map({v: r[0] for v, r in results.items()}).astype(object)
    reason = values.map({v: r[1] for v, r in results.items()}).astype(object)
    return clean.where(clean.notna(), None), reason.where(reason.notna(), None)


# Plain ASCII addresses (almost all of them) are checked with one regex; anything else goes to
# email_validator, which is exact but takes ~25 µs an address. Both give the same normalized
# form for what the regex accepts: the local part as written, the domain in lower case
# (punycode domains go to email_validator, which shows them in Unicode).
_SIMPLE_EMAIL = re.compile(
    r"(?=.{6,254}$)(?=[^@]{1,64}@)(?!.*@(?:.*\.)?xn--)[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}")
_SPECIAL_TLDS = ("arpa", "invalid", "local", "localhost", "onion", "test")  # rejected by both


def _emails(raw: pd.Series) -> Checked:
    simple = raw.str.fullmatch(_SIMPLE_EMAIL).fillna(False).astype(bool)
    tld = raw[simple].str.rsplit(".", n=1).str[-1].str.lower()
    simple[tld.index[tld.isin(_SPECIAL_TLDS)]] = False
    clean = pd.Series(None, index=raw.index, dtype=object)
    if simple.any():
        parts = raw[simple].str.partition("@")
        clean[simple] = parts[0] + "@" + parts[2].str.lower()
    reason = _no_reason(raw.index)
    rest = raw.notna() & ~simple
    if rest.any():
        clean[rest], reason[rest] = _by_distinct(raw[rest], _email)
    return clean, reason


def _email(v: str) -> tuple[object, str | None]:
    try:
        info = validate_email(v, check_deliverability=False)
        return info.normalized, None
    except EmailNotValidError as exc:
        return None, f"invalid email {v!r}: {exc}"


@lru_cache(maxsize=4)
def _phone_checker(region: str) -> Callable[[str], tuple[object, str | None]]:
    def check(v: str) -> tuple[object, str | None]:
        try:
            num = phonenumbers.parse(v, region)
        except phonenumbers.NumberParseException:
            return None, f"invalid phone {v!r}: not a phone number"
        if not phonenumbers.is_valid_number(num):
            return None, f"invalid phone {v!r}: not a valid number (default region {region})"
        return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164), None
    return check


def known_region(region: str) -> str | None:
    """The region code in upper case if phonenumbers knows it, else None."""
    code = region.strip().upper()
    return code if code in phonenumbers.SUPPORTED_REGIONS else None


def chinese_mobiles(phones: pd.Series) -> int:
    """How many phones are written as mainland Chinese mobile numbers (11 digits starting with
    1): the sign of a Chinese file read with another default region."""
    phones = phones.dropna().astype(str)
    if phones.empty:
        return 0
    digits = phones.str.replace(r"[\s\-().]", "", regex=True)
    return int(digits.str.fullmatch(_CN_MOBILE).fillna(False).sum())


def _order_status(v: str) -> tuple[object, str | None]:
    key = re.sub(r"[\s\-]+", "_", v.strip().lower())
    if key in ORDER_STATUSES:
        return ORDER_STATUSES[key], None
    return None, (f"unknown order status {v!r} (read as completed; known: completed, paid, "
                  "shipped, cancelled, refunded, pending, failed and their Chinese names)")


def _currency(v: str) -> tuple[object, str | None]:
    key = v.strip()
    if key.lower() in _CURRENCY_NAMES:
        return _CURRENCY_NAMES[key.lower()], None
    if re.fullmatch(r"[A-Za-z]{3}", key):
        return key.upper(), None
    return None, f"not a currency code such as USD or CNY: {v!r}"


def amount_currencies(raw: pd.Series) -> pd.Series:
    """The currency each amount names by its sign or code (None when it names none)."""
    out = pd.Series(None, index=raw.index, dtype=object)
    text = raw.dropna().astype(str)
    text = text[pd.to_numeric(text, errors="coerce").isna()]  # plain numbers name nothing
    for pattern, code in _AMOUNT_CURRENCY:
        hit = text.str.contains(pattern, regex=True)
        out[hit[hit].index] = out[hit[hit].index].fillna(code)
    return out


def _locale(v: str) -> tuple[object, str | None]:
    """BCP 47 case: ``zh_cn`` -> ``zh-CN``, ``ZH-hans-cn`` -> ``zh-Hans-CN``."""
    if not _LOCALE.fullmatch(v):
        return None, f"not a locale such as en or zh-CN: {v!r}"
    lang, *rest = re.split("[-_]", v)
    return "-".join([lang.lower(), *(p.title() if len(p) == 4 else p.upper() for p in rest)]), None


def _timezone(v: str) -> tuple[object, str | None]:
    try:
        ZoneInfo(v)
        return v, None
    except (ZoneInfoNotFoundError, ValueError):
        return None, f"unknown time zone {v!r} (use an IANA name such as Asia/Shanghai)"


_OFFSET = re.compile(r"(?:Z|\s?(?:UTC|GMT)|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
_CJK_DATE = str.maketrans({"年": "-", "月": "-", "日": " ", "时": ":", "分": ":", "秒": " "})


def parse_datetimes(values: pd.Series, tz: str, dayfirst: bool = False) -> Checked:
    """Times with a UTC offset (``Z``, ``+08:00``) are converted exactly; naive times are
    read in ``tz``. ISO 8601 goes through one vectorised parse; other layouts (``2024/1/5``,
    ``1/5/2024 3:04 PM``, ``20240105``, ``2024年1月5日``) through slower parsing of what is
    left. Results are naive UTC."""
    present = values.notna()
    text = values[present].astype(str)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    reason = _no_reason(values.index)
    try:
        parts = [(text, pd.to_datetime(text, errors="coerce", format="ISO8601"))]
    except ValueError:  # naive times and times with (different) offsets in one column
        aware = text.str.contains(_OFFSET, regex=True)
        parts = [(text[aware], pd.to_datetime(text[aware], errors="coerce", format="ISO8601",
                                              utc=True)),
                 (text[~aware], _iso_or_nat(text[~aware]))]
    for part, parsed in parts:
        _store(part, parsed, tz, out, reason)
    rest = text[out[text.index].isna() & reason[text.index].isna()]
    if len(rest):  # other layouts
        if rest.str.contains("[年月日时分秒]", regex=True).any():
            rest = (rest.str.translate(_CJK_DATE).str.replace(r"\s+", " ", regex=True)
                    .str.strip().str.rstrip(":"))
        aware = rest.str.contains(_OFFSET, regex=True)
        for part, utc in ((rest[aware], True), (rest[~aware], False)):
            if len(part):
                _store(part, _parse_other(part, utc=utc, dayfirst=dayfirst), tz, out, reason,
                       is_utc=utc)
    bad = present & out.isna() & reason.isna()
    reason[bad] = "unparseable date " + values[bad].astype(str).map(repr)
    return out, reason


def _iso_or_nat(text: pd.Series) -> pd.Series:
    try:
        return pd.to_datetime(text, errors="coerce", format="ISO8601")
    except ValueError:  # an offset the pattern did not see: leave it to the slower parsing
        return pd.Series(pd.NaT, index=text.index, dtype="datetime64[us]")


def _store(text: pd.Series, parsed: pd.Series, tz: str, out: pd.Series, reason: pd.Series,
           is_utc: bool = False) -> None:
    """Put parsed times into ``out`` as naive UTC: aware ones converted, naive ones read in
    ``tz`` (unless ``is_utc``); naive times a clock change makes ambiguous get a reason."""
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        is_utc = True
    if is_utc:
        out[text.index] = parsed.astype("datetime64[us]")
        return
    utc, ambiguous = _local_to_utc(parsed.astype("datetime64[us]"), tz)
    out[text.index] = utc
    if ambiguous.any():
        reason[ambiguous[ambiguous].index] = (
            "ambiguous local time " + text[ambiguous].map(repr)
            + f" in {tz} (the clock went back): add a UTC offset")


def _parse_other(text: pd.Series, *, utc: bool, dayfirst: bool) -> pd.Series:
    """Compact dates and any other layout pandas recognises; NaT when nothing fits.
    ``utc``: the values carry offsets; the result is naive UTC."""
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us]")
    compact = text.str.fullmatch(r"\d{8}")
    if compact.any():
        parsed[compact[compact].index] = pd.to_datetime(
            text[compact], format="%Y%m%d", errors="coerce").astype("datetime64[us]")
    other = text[~compact]
    if len(other):
        parsed[other.index] = _parse_mixed(other, utc=utc, dayfirst=dayfirst)
    return parsed


def _parse_mixed(text: pd.Series, *, utc: bool, dayfirst: bool) -> pd.Series:
    try:
        got = pd.to_datetime(text, errors="coerce", format="mixed", dayfirst=dayfirst, utc=utc)
    except (ValueError, TypeError):  # e.g. "... UTC" among naive values: one at a time
        got = pd.Series([_one(v, utc, dayfirst) for v in text], index=text.index)
    if getattr(got.dt, "tz", None) is not None:
        got = got.dt.tz_convert("UTC").dt.tz_localize(None)
    return got.astype("datetime64[us]")


def _one(value: str, utc: bool, dayfirst: bool) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(pd.to_datetime(value, dayfirst=dayfirst))
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    if ts.tzinfo is not None:
        return ts.tz_convert("UTC").tz_localize(None)
    return ts  # a naive value among aware ones is taken as UTC only when utc is asked for


def _local_to_utc(local: pd.Series, tz: str) -> tuple[pd.Series, pd.Series]:
    """Naive local times in ``tz`` as naive UTC, and which were ambiguous (a clock change
    repeats them). Times skipped by a clock change move forward, as a wall clock does."""
    if tz == "UTC":
        return local, pd.Series(False, index=local.index)
    aware = local.dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")
    ambiguous = local.notna() & aware.isna()
    return aware.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]"), ambiguous


def check_column(field: Field, raw: pd.Series, *, region: str, tz: str) -> Checked:
    """Clean one column; ``raw`` holds stripped strings with None for empty cells."""
    reason = _no_reason(raw.index)
    kind = field.kind
    if kind in ("id", "text"):
        clean = raw.astype(object)
        if field.max_length or kind == "id":
            limit = field.max_length or 64
            long = raw.str.len() > limit
            reason[long] = f"longer than {limit} characters"
    elif kind == "email":
        clean, reason = _emails(raw)
    elif kind == "phone":
        clean, reason = _by_distinct(raw, _phone_checker(region))
    elif kind == "timezone":
        clean, reason = _by_distinct(raw, _timezone)
    elif kind == "order_status":
        clean, reason = _by_distinct(raw, _order_status)
    elif kind == "currency":
        clean, reason = _by_distinct(raw, _currency)
    elif kind == "datetime":
        clean, reason = parse_datetimes(raw, tz)
    elif kind in ("money", "int"):
        num = pd.to_numeric(raw, errors="coerce")
        noisy = raw.notna() & num.isna()
        if kind == "money" and noisy.any():  # currency signs, thousands separators
            num[noisy] = pd.to_numeric(raw[noisy].str.replace(_MONEY_NOISE, "", regex=True),
                                       errors="coerce")
        bad = raw.notna() & num.isna()
        reason[bad] = "not a number: " + raw[bad].map(repr)
        neg = num < 0
        reason[neg] = "must be >= 0, got " + raw[neg]
        if kind == "int":
            frac = num.notna() & (num != np.floor(num.fillna(0)))
            reason[frac] = "must be a whole number, got " + raw[frac]
            clean = num.mask(frac).astype("Int64")
        else:
            clean = num.round(2)
    elif kind == "bool":
        low = raw.fillna("").str.lower()
        clean = low.isin(_TRUE)
        bad = ~clean & ~low.isin(_FALSE)
        reason[bad] = "not a yes/no value: " + raw[bad].map(repr)
    elif kind == "locale":
        clean, reason = _by_distinct(raw, _locale)
    elif kind == "country":
        ok = raw.isna() | raw.str.fullmatch(r"[A-Za-z]{2}").fillna(False).astype(bool)
        reason[~ok] = "not a two-letter country code: " + raw[~ok].map(repr)
        clean = raw.str.upper()
    else:  # pragma: no cover - a programming error, not input
        raise ValueError(f"unknown field kind {kind}")
    if field.required:
        missing = raw.isna()
        reason[missing] = "required value is missing"
    return clean, reason
