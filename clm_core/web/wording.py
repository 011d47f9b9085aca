"""What the consent pages say, in en and zh-CN.

The ledger records ``clm_core.consent.config.WORDING_VERSION`` (or ``[consent]
wording_version`` when a project words its pages itself) with every change made on these
pages: proof of what the person was shown. Change the version whenever a text here changes.
"""

from __future__ import annotations

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "unsubscribe_title": "Unsubscribe",
        "unsubscribe_email": "Stop marketing emails from {store} to {address}?",
        "unsubscribe_sms": "Stop marketing text messages from {store} to {address}?",
        "unsubscribe_button": "Unsubscribe",
        "unsubscribe_note": "Nothing changes until you press the button.",
        "preferences_link": "Choose what you receive instead",
        "done_title": "You are unsubscribed",
        "done_email": "{store} will send no more marketing emails to {address}.",
        "done_sms": "{store} will send no more marketing text messages to {address}.",
        "already": "This address was already unsubscribed.",
        "preferences_title": "Your preferences",
        "preferences_intro": "Choose what {store} may send you. Untick a box to stop it.",
        "legend_email": "Email",
        "legend_sms": "Text messages (SMS)",
        "channel_email": "Marketing emails to {address}",
        "channel_sms": "Marketing text messages to {address}",
        "topics": "Only about these topics:",
        "save": "Save my choices",
        "saved": "Your choices are saved.",
        "nothing_changed": "Your choices were already as saved.",
        "invalid_title": "This link does not work",
        "invalid_body": "The link is incomplete, altered or too old. Nothing was changed. "
                        "Use the link in a recent message, or reply to it to reach us.",
        "csrf_title": "Please try again",
        "csrf_body": "This form is too old or did not come from this page. Nothing was changed. "
                     "Reload the page and save again.",
        "unknown_customer": "We could not find this subscription any more. "
                            "You will receive no messages through it.",
    },
    "zh-CN": {
        "unsubscribe_title": "退订",
        "unsubscribe_email": "不再接收{store}发送到 {address} 的营销邮件？",
        "unsubscribe_sms": "不再接收{store}发送到 {address} 的营销短信？",
        "unsubscribe_button": "退订",
        "unsubscribe_note": "在您点击按钮之前，不会做任何更改。",
        "preferences_link": "改为选择您想接收的内容",
        "done_title": "您已退订",
        "done_email": "{store}将不再向 {address} 发送营销邮件。",
        "done_sms": "{store}将不再向 {address} 发送营销短信。",
        "already": "此地址此前已退订。",
        "preferences_title": "您的订阅偏好",
        "preferences_intro": "选择{store}可以向您发送的内容。取消勾选即可停止接收。",
        "legend_email": "邮件",
        "legend_sms": "短信",
        "channel_email": "发送到 {address} 的营销邮件",
        "channel_sms": "发送到 {address} 的营销短信",
        "topics": "仅限以下主题：",
        "save": "保存我的选择",
        "saved": "您的选择已保存。",
        "nothing_changed": "您的选择与之前相同。",
        "invalid_title": "此链接无效",
        "invalid_body": "链接不完整、已被修改或已过期。没有做任何更改。"
                        "请使用最近一条消息中的链接，或直接回复该消息与我们联系。",
        "csrf_title": "请重试",
        "csrf_body": "此表单已过期或并非来自本页面。没有做任何更改。请刷新页面后再次保存。",
        "unknown_customer": "找不到此订阅。您不会再通过它收到任何消息。",
    },
}


def pick_locale(value: str | None) -> str:
    """``zh``, ``zh-CN``, ``zh_Hans`` ... -> zh-CN; anything else -> en."""
    return "zh-CN" if (value or "").lower().replace("_", "-").startswith("zh") else "en"


def locale_from_accept_language(header: str | None) -> str:
    """The first of en / zh-CN the browser asks for (for pages without a known customer)."""
    for part in (header or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return "en"


def mask_address(address: str | None) -> str:
    """Enough of an address to recognise it, not enough to harvest it from a shared link:
    ``a***@example.com``, ``+1******0101``."""
    if not address:
        return ""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    return address[:2] + "*" * max(0, len(address) - 6) + address[-4:]
