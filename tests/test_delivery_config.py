"""The [delivery] section: defaults to the local sandbox, clear errors, credentials by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from clm_core.delivery.config import SANDBOX_URL, load_delivery_config
from clm_core.errors import ConfigError
from clm_core.settings import load_settings


def config(tmp_path: Path, toml: str, env: dict[str, str] | None = None):
    (tmp_path / "clm.toml").write_text(toml, encoding="utf-8")
    return load_delivery_config(load_settings(tmp_path, env={}), env=env or {})


def test_defaults_send_to_the_sandbox(tmp_path: Path) -> None:
    c = config(tmp_path, "")
    assert {ch: p.kind for ch, p in c.channels.items()} == {
        "email": "sendgrid", "sms": "twilio", "coupon": "stripe", "webhook": "webhook"}
    assert all(p.base_url == SANDBOX_URL for p in c.channels.values())
    assert c.channels["coupon"].idempotent and not c.channels["email"].idempotent


def test_real_provider_needs_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No Prefect API here: the Secret block look-up fails at once instead of starting one.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    toml = '[delivery]\nemail = "mail"\n[delivery.providers.mail]\nkind = "mailgun"\n' \
           'base_url = "https://api.mailgun.net"\napi_key_env = "MG_KEY"\ndomain = "mg.shop.com"\n'
    with pytest.raises(ConfigError, match="MG_KEY"):
        config(tmp_path, toml)
    c = config(tmp_path, toml, env={"MG_KEY": "key-very-secret"})
    mail = c.channels["email"]
    assert mail.kind == "mailgun" and mail.secrets == {"api_key": "key-very-secret"}
    assert mail.option("domain") == "mg.shop.com" and "key-very-secret" not in repr(mail)


@pytest.mark.parametrize("toml,message", [
    ("[delivery]\nbatch_sise = 10\n", "did you mean 'batch_size'"),
    ('[delivery]\nsms = "twillio"\n', "did you mean 'twilio'"),
    ('[delivery.providers.x]\nkind = "sendgird"\n[delivery]\n', ""),
    ("[delivery]\nlease_seconds = 5\ntimeout = 10\n", "lease_seconds"),
    ('[delivery]\nbatch_size = "many"\n', "[delivery]"),
])
def test_errors_say_what_and_where(tmp_path: Path, toml: str, message: str) -> None:
    if "sendgird" in toml:
        toml = '[delivery]\nemail = "x"\n[delivery.providers.x]\nkind = "sendgird"\n'
        message = "did you mean 'sendgrid'"
    with pytest.raises(ConfigError) as err:
        config(tmp_path, toml)
    assert message in str(err.value)
