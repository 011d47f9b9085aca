"""Deterministic, clearly fake contact details for data sets that have only purchase histories.

Emails use example.com (reserved by RFC 2606); US phones use the fictional 555-01XX range;
every row is flagged in ``attributes.synthetic_contact``. Everything derives from the customer number,
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
    ("en-US", 0.55, ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"]),
    ("en-GB", 0.12, ["Europe/London"]),
    ("zh-CN", 0.25, ["Asia/Shanghai"]),
    ("de-DE", 0.08, ["Europe/Berlin"]),
]
_US_AREAS = np.array([201, 202, 212, 213, 312, 415, 503, 617, 702, 713, 720, 206])


def fake_contacts(numbers: np.ndarray, prefix: str, signed_up_at: pd.Series | None = None) -> pd.DataFrame:
    """Contact columns for customers numbered ``numbers`` (ints), with external ids ``prefix-N``."""
    n = np.asarray(numbers, dtype=np.int64)
    # Per-customer determinism regardless of which subset is imported: hash each number.
    h = (n * 2654435761) % 2**32
    r = (h % 10_000) / 10_000
    shares = np.cumsum([s for _, s, _ in _LOCALES])
    loc_idx = np.searchsorted(shares, r, side="right").clip(0, len(_LOCALES) - 1)
    locale = np.array([_LOCALES[i][0] for i in loc_idx])
    tz = np.array([_LOCALES[i][2][int(x) % len(_LOCALES[i][2])] for i, x in zip(loc_idx, h // 7)])
    a, b = (h // 13) % 1000, (h // 17) % 1000
    name = np.where(
        locale == "zh-CN",
        np.array([_CN_FAMILY[x % len(_CN_FAMILY)] + _CN_GIVEN[y % len(_CN_GIVEN)] for x, y in zip(a, b)]),
        np.where(locale == "de-DE",
                 np.array([f"{_DE_FIRST[x % 8]} {_DE_LAST[y % 6]}" for x, y in zip(a, b)]),
                 np.array([f"{_FIRST[x % len(_FIRST)]} {_LAST[y % len(_LAST)]}" for x, y in zip(a, b)])))
    ext = np.char.add(f"{prefix}-", np.char.zfill(n.astype(str), 5))
    email = np.char.add(np.char.add(f"{prefix}.", np.char.zfill(n.astype(str), 5)), "@example.com")
    sub = (h // 101) % 10_000
    phone = np.select(
        [locale == "zh-CN", locale == "en-GB", locale == "de-DE"],
        [np.char.add("+86138", np.char.zfill(((h // 3) % 10**8).astype(str), 8)),
         np.char.add("+447400", np.char.zfill(((h // 3) % 10**6).astype(str), 6)),
         np.char.add("+49151", np.char.zfill(((h // 5) % 10**8).astype(str), 8))],
        np.char.add(np.char.add("+1", _US_AREAS[h % len(_US_AREAS)].astype(str)),
                    np.char.add("555", np.char.zfill((100 + sub % 100).astype(str), 4))))
    consent_email = ((h // 19) % 100) < 85
    consent_sms = ((h // 23) % 100) < 60
    return pd.DataFrame({
        "external_id": ext, "name": name, "email": email, "phone": phone, "locale": locale,
        "timezone": tz, "consent_email": consent_email, "consent_sms": consent_sms,
        "signed_up_at": signed_up_at if signed_up_at is not None else pd.NaT,
        "attributes": [{"synthetic_contact": True}] * len(n),
    })
