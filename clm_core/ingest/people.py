"""Deterministic, clearly fake contact details for data sets that have only purchase histories.

Emails use example.com (reserved by RFC 2606); US phones use the fictional 555-01XX range;
every row is flagged in ``attributes.synthetic_contact``. Everything derives from the customer
number,
so re-running an import gives the same people.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_FIRST = ["Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery", "Quinn",
          "Harper", "Rowan", "Emerson", "Finley", "Dakota", "Reese", "Skyler", "Parker"]
_LAST = ["Smith", "Johnson", "Brown", "Miller", "Davis", "Wilson", "Moore", "Clark", "Lewis",
         "Walker", "Young", "King", "Wright", "Hill", "Green", "Baker"]
_CN_FAMILY = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙"]
_CN_GIVEN = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "军", "杰", "娟", "涛", "明"]
_DE_FIRST = ["Lukas", "Anna", "Leon", "Mia", "Finn", "Lea", "Jonas", "Lena"]
_DE_LAST = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer"]

# locale, share, time zones, phone pattern
_LOCALES = [
    (
        "en-US",
        0.55,
        ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"],
    ),
    ("en-GB", 0.12, ["Europe/London"]),
    ("zh-CN", 0.25, ["Asia/Shanghai"]),
    ("de-DE", 0.08, ["Europe/Berlin"]),
]
_US_AREAS = np.array([201, 202, 212, 213, 312, 415, 503, 617, 702, 713, 720, 206])


def _combos(first: list[str], last: list[str], sep: str) -> np.ndarray:
    """Every first/last pairing, so names are picked by array indexing instead of a loop."""
    return np.array([[f"{a}{sep}{b}" for b in last] for a in first])


_EN_NAMES = _combos(_FIRST, _LAST, " ")
_CN_NAMES = _combos(_CN_FAMILY, _CN_GIVEN, "")
_DE_NAMES = _combos(_DE_FIRST, _DE_LAST, " ")
_TZ_COUNT = np.array([len(z) for _, _, z in _LOCALES])
_TZ_TABLE = np.array([z + [z[0]] * (_TZ_COUNT.max() - len(z)) for _, _, z in _LOCALES])


def numbered(prefix: str, numbers: np.ndarray, width: int, suffix: str = "") -> np.ndarray:
    """``prefix`` + ``numbers`` zero-padded to at least ``width`` digits + ``suffix``.

    Built as a byte matrix: formatting millions of ints through ``str`` takes seconds.
    """
    n = np.asarray(numbers, dtype=np.uint64)
    width = max(width, len(str(int(n.max()))) if len(n) else width)
    head, tail = prefix.encode(), suffix.encode()
    out = np.empty((len(n), len(head) + width + len(tail)), dtype=np.uint8)
    out[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    out[:, len(head) + width:] = np.frombuffer(tail, dtype=np.uint8)
    for k in range(len(head) + width - 1, len(head) - 1, -1):
        n, digit = np.divmod(n, 10)
        out[:, k] = digit + ord("0")
    return out.view(f"S{out.shape[1]}").ravel().astype(str)


def fake_contacts(
    numbers: np.ndarray, prefix: str, signed_up_at: pd.Series | None = None
) -> pd.DataFrame:
    """Contact columns for customers numbered ``numbers`` (ints), with external ids ``prefix-N``
    (at least five digits; wider when the largest number needs it)."""
    n = np.asarray(numbers, dtype=np.int64)
    # Per-customer determinism regardless of which subset is imported: hash each number.
    h = (n * 2654435761) % 2**32
    r = (h % 10_000) / 10_000
    shares = np.cumsum([s for _, s, _ in _LOCALES])
    loc_idx = np.searchsorted(shares, r, side="right").clip(0, len(_LOCALES) - 1)
    locale = np.array([code for code, _, _ in _LOCALES])[loc_idx]
    tz = _TZ_TABLE[loc_idx, (h // 7) % _TZ_COUNT[loc_idx]]
    a, b = (h // 13) % 1000, (h // 17) % 1000
    name = np.select(
        [locale == "zh-CN", locale == "de-DE"],
        [_CN_NAMES[a % len(_CN_FAMILY), b % len(_CN_GIVEN)],
         _DE_NAMES[a % len(_DE_FIRST), b % len(_DE_LAST)]],
        _EN_NAMES[a % len(_FIRST), b % len(_LAST)])
    ext = numbered(f"{prefix}-", n, 5)
    email = numbered(f"{prefix}.", n, 5, "@example.com")
    phone = np.empty(len(n), dtype=object)
    for code, number in (  # each locale's numbering plan, as (prefix, number, digits)
            ("zh-CN", lambda x: ("+86138", (x // 3) % 10**8, 8)),
            ("en-GB", lambda x: ("+447400", (x // 3) % 10**6, 6)),
            ("de-DE", lambda x: ("+49151", (x // 5) % 10**8, 8)),
            ("en-US", lambda x: ("+1", _US_AREAS[x % len(_US_AREAS)] * 10**7 + 5_550_000
                                 + 100 + (x // 101) % 100, 10))):
        mine = locale == code
        if mine.any():
            phone[mine] = numbered(*number(h[mine]))
    consent_email = ((h // 19) % 100) < 85
    consent_sms = ((h // 23) % 100) < 60
    return pd.DataFrame({
        "external_id": ext, "name": name, "email": email, "phone": phone, "locale": locale,
        "timezone": tz, "consent_email": consent_email, "consent_sms": consent_sms,
        "signed_up_at": signed_up_at if signed_up_at is not None else pd.NaT,
        "attributes": [{"synthetic_contact": True}] * len(n),
    })
