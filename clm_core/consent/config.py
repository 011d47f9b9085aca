"""``[consent]`` in clm.toml: topics people can choose, the wording version, SMS replies.

    [consent]
    wording_version = "web-2026-11"      # recorded with every change made on the pages
    topics = ["offers", "tips"]          # journey tags a person may opt out of one by one

    [consent.topic_labels.offers]        # optional; the tag itself is shown otherwise
    en = "Offers and coupons"
    zh-CN = "优惠和优惠券"

    [consent.sms]                        # replies to inbound keywords; no marketing in them
    help.en = "{store}: account messages and offers. Reply STOP to opt out. Help: {help_url}"
    stop.en = "{store}: you are unsubscribed and will get no more messages. Reply START to rejoin."
    start.en = "{store}: you are subscribed again. Reply STOP to opt out."

A message belongs to a topic when its journey's tags include it (``tags:`` in the journey
YAML); dispatch skips it for a person who withdrew from that topic on that channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clm_core.errors import ConfigError
from clm_core.settings import Settings

# The version of the consent wording shown on the pages and in SMS replies; the ledger records it
# with every change made there. Change it whenever such a text changes.
WORDING_VERSION = "web-2026-11"
LOCALES = ("en", "zh-CN")

SMS_REPLIES: dict[str, dict[str, str]] = {
    "help": {
        "en": "{store}: marketing messages. Reply STOP to opt out, START to opt back in.",
        "zh-CN": "【{store}】营销短信。回复T退订，回复START恢复接收。",
    },
    "stop": {
        "en": "{store}: you are unsubscribed and will receive no more messages. "
              "Reply START to opt back in.",
        "zh-CN": "【{store}】您已退订，将不再收到短信。",
    },
    "start": {
        "en": "{store}: you will receive messages again. Reply STOP to opt out.",
        "zh-CN": "【{store}】您已恢复接收短信。回复T退订。",
    },
}
_KEYS = {"wording_version", "topics", "topic_labels", "sms"}


@dataclass(frozen=True)
class ConsentConfig:
    topics: tuple[str, ...] = ()
    topic_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    wording_version: str = WORDING_VERSION
    sms_replies: dict[str, dict[str, str]] = field(default_factory=lambda: SMS_REPLIES)

    def label(self, topic: str, locale: str) -> str:
        labels = self.topic_labels.get(topic, {})
        return labels.get(locale) or labels.get("en") or topic

    def sms_reply(self, kind: str, locale: str, store: str) -> str:
        texts = self.sms_replies[kind]
        return (texts.get(locale) or texts["en"]).format(store=store)


def load_consent_config(settings: Settings) -> ConsentConfig:
    section: dict[str, Any] = settings.section("consent")
    unknown = set(section) - _KEYS
    if unknown:
        raise ConfigError(f"[consent]: unknown keys {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(sorted(_KEYS))}")
    topics = section.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(x, str) and x for x in topics):
        raise ConfigError("[consent] topics must be a list of journey tags")
    labels = section.get("topic_labels", {})
    for topic in labels:
        if topic not in topics:
            raise ConfigError(f"[consent.topic_labels.{topic}]: {topic!r} is not in topics")
    replies = {kind: dict(texts) for kind, texts in SMS_REPLIES.items()}
    for kind, texts in dict(section.get("sms", {})).items():
        if kind not in replies or not isinstance(texts, dict):
            raise ConfigError(f"[consent.sms] {kind!r}: expected help, stop or start, each a "
                              f"table of locale = text ({', '.join(LOCALES)})")
        replies[kind].update({str(k): str(v) for k, v in texts.items()})
    return ConsentConfig(tuple(topics), {k: dict(v) for k, v in labels.items()},
                         str(section.get("wording_version", WORDING_VERSION)), replies)
