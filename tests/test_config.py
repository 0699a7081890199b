"""Settings.from_env: defaults, coercion, every problem reported at once, and secrets kept secret."""

import json
import os
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caselink import config
from caselink.config import DATADOG_SITES
from caselink.config import INSTANCE_PATH
from caselink.config import Secret
from caselink.config import Settings
from caselink.errors import ConfigError

BRIEF_SITES = (
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
)
LIVE = {"DD_API_KEY": "api-key-value-1234", "DD_APP_KEY": "app-key-value-5678"}


def problems(env):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    return caught.value


# -- defaults -----------------------------------------------------------------------


def test_an_empty_environment_gives_dry_run_and_says_why():
    settings = Settings.from_env({})

    assert settings.dry_run is True
    assert "DD_API_KEY" in settings.dry_run_reason
    assert "DD_APP_KEY" in settings.dry_run_reason
    assert settings.dd_api_key is None
    assert settings.dd_app_key is None


def test_defaults():
    settings = Settings.from_env({})

    assert settings.dd_site == "datadoghq.com"
    assert settings.dd_api_url == "https://api.datadoghq.com"
    assert settings.database_url == f"sqlite:///{INSTANCE_PATH / 'caselink.db'}"
    assert settings.database_engine == "sqlite"
    assert settings.rules_file.name == "rules.yaml"
    assert settings.rules_file.is_absolute()
    assert settings.webhook_secrets == {}
    assert settings.admin_token is None
    assert settings.dry_run_requested is False
    assert settings.dd_timeout == 10.0
    assert settings.worker_concurrency == 4
    assert settings.port == 8000
    assert settings.web_concurrency == 2
    assert settings.grafana_signature_header == "X-Grafana-Alerting-Signature"
    assert settings.log_level == "INFO"


def test_blank_values_count_as_unset():
    settings = Settings.from_env(
        {"DD_API_KEY": "  ", "DD_SITE": "", "DATABASE_URL": " ", "GRAFANA_SIGNATURE_HEADER": ""}
    )
    assert settings.dry_run is True
    assert settings.dd_site == "datadoghq.com"
    assert settings.database_engine == "sqlite"
    assert settings.grafana_signature_header == "X-Grafana-Alerting-Signature"


def test_both_keys_make_it_live():
    settings = Settings.from_env(LIVE)
    assert settings.dry_run is False
    assert settings.dry_run_reason is None
    assert settings.dd_api_key.reveal() == "api-key-value-1234"
    assert settings.dd_app_key.reveal() == "app-key-value-5678"


def test_dry_run_can_be_asked_for_with_keys_set():
    settings = Settings.from_env({**LIVE, "DRY_RUN": "true"})
    assert settings.dry_run is True
    assert settings.dry_run_reason == "DRY_RUN is set"


def test_settings_built_with_only_one_key_are_dry_run():
    settings = Settings(dd_api_key=Secret("k"))
    assert settings.dry_run is True
    assert settings.dry_run_reason is not None


def test_the_process_environment_is_read_when_none_is_given(monkeypatch):
    monkeypatch.setattr(os, "environ", {"DD_SITE": "datadoghq.eu", "OPSGENIE_WEBHOOK_SECRET": "s"})
    settings = Settings.from_env()
    assert settings.dd_api_url == "https://api.datadoghq.eu"
    assert settings.secrets_for("opsgenie")[0].reveal() == "s"


# -- Datadog site and URL -------------------------------------------------------------


def test_the_brief_and_the_code_list_the_same_sites():
    assert set(DATADOG_SITES) == set(BRIEF_SITES)


@pytest.mark.parametrize("site", BRIEF_SITES)
def test_every_datadog_site_is_accepted(site):
    settings = Settings.from_env({"DD_SITE": site})
    assert settings.dd_site == site
    assert settings.dd_api_url == f"https://api.{site}"


def test_a_site_is_read_without_regard_to_case_or_spaces():
    assert Settings.from_env({"DD_SITE": " DatadogHQ.EU "}).dd_api_url == "https://api.datadoghq.eu"


@pytest.mark.parametrize(
    "site", ["datadoghq.org", "us4.datadoghq.com", "https://app.datadoghq.com", "api.datadoghq.eu", "eu"]
)
def test_a_bad_site_is_rejected_naming_the_variable_and_the_valid_sites(site):
    error = problems({"DD_SITE": site})

    assert len(error.detail["problems"]) == 1
    assert "DD_SITE" in error.message
    for valid in BRIEF_SITES:
        assert valid in error.message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8126", "http://127.0.0.1:8126"),
        ("https://dd-proxy.internal/datadog/", "https://dd-proxy.internal/datadog"),
        ("https://user:pw@dd-proxy.internal", "https://user:pw@dd-proxy.internal"),
    ],
)
def test_dd_api_url_overrides_the_site(url, expected):
    settings = Settings.from_env({"DD_SITE": "datadoghq.eu", "DD_API_URL": url})
    assert settings.dd_api_url == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://user:hunter2secret@proxy.internal",
        "https://user:hunter2secret@",
        "user:hunter2secret@proxy.internal",
        "https://user:hunter2secret@proxy.internal:port",
        "https://user:hunter2secret@proxy.internal/?key=hunter2secret",
    ],
)
def test_a_bad_dd_api_url_is_rejected_without_quoting_it(url):
    error = problems({"DD_API_URL": url})
    assert "DD_API_URL" in error.message
    assert "hunter2secret" not in json.dumps(error.to_dict())


def test_the_display_url_hides_the_password_of_dd_api_url():
    settings = Settings.from_env({"DD_API_URL": "https://user:hunter2secret@proxy.internal:8443/dd"})
    assert settings.dd_api_display_url == "https://proxy.internal:8443/dd"


# -- DATABASE_URL --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@db.example:5432/caselink?sslmode=require",
        "postgresql://u:p@db.example:5432/caselink?sslmode=require",
        "POSTGRES://u:p@db.example:5432/caselink?sslmode=require",
        "postgresql+psycopg://u:p@db.example:5432/caselink?sslmode=require",
    ],
)
def test_postgres_urls_get_the_psycopg_driver(url):
    settings = Settings.from_env({"DATABASE_URL": url})
    assert settings.database_url == "postgresql+psycopg://u:p@db.example:5432/caselink?sslmode=require"
    assert settings.database_engine == "postgresql"


@pytest.mark.parametrize("url", ["sqlite:////var/lib/caselink.db", "sqlite://"])
def test_sqlite_urls_are_kept(url):
    settings = Settings.from_env({"DATABASE_URL": url})
    assert settings.database_url == url
    assert settings.database_engine == "sqlite"


@pytest.mark.parametrize("url", ["mysql://u:s3cretpass@db/caselink", "/var/lib/caselink.db", "redis://:s3cretpass@r"])
def test_other_databases_are_rejected_without_quoting_the_url(url):
    error = problems({"DATABASE_URL": url})
    assert "DATABASE_URL" in error.message
    assert "s3cretpass" not in json.dumps(error.to_dict())


# -- keys, numbers and booleans -------------------------------------------------------------


@pytest.mark.parametrize(("present", "missing"), [("DD_API_KEY", "DD_APP_KEY"), ("DD_APP_KEY", "DD_API_KEY")])
def test_one_key_without_the_other_is_rejected(present, missing):
    error = problems({present: LIVE[present]})
    assert len(error.detail["problems"]) == 1
    assert present in error.message
    assert missing in error.message
    assert LIVE[present] not in json.dumps(error.to_dict())


@pytest.mark.parametrize("value", ["api key with spaces", "api-key\nsecond-line", "api-key\x00"])
def test_a_key_that_cannot_be_sent_as_a_header_is_rejected_without_quoting_it(value):
    error = problems({"DD_API_KEY": value, "DD_APP_KEY": "app-key-value-5678"})
    assert len(error.detail["problems"]) == 1
    assert "DD_API_KEY" in error.message
    assert "api-key" not in json.dumps(error.to_dict())
    assert "api key" not in json.dumps(error.to_dict())


def test_one_key_without_the_other_is_rejected_even_in_dry_run():
    error = problems({"DD_API_KEY": "k", "DRY_RUN": "1"})
    assert "DD_APP_KEY" in error.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DD_TIMEOUT", "ten"),
        ("DD_TIMEOUT", "nan"),
        ("DD_TIMEOUT", "inf"),
        ("DD_TIMEOUT", "0"),
        ("WEBHOOK_TOLERANCE", "-5"),
        ("WORKER_POLL_INTERVAL", "1s"),
        ("WORKER_CONCURRENCY", "1.5"),
        ("WORKER_CONCURRENCY", "inf"),
        ("WORKER_CONCURRENCY", "0"),
        ("DELIVERY_MAX_ATTEMPTS", "many"),
        ("MAX_BODY_BYTES", "4MB"),
        ("PORT", "http"),
        ("PORT", "70000"),
        ("WEB_CONCURRENCY", "0"),
        ("DRY_RUN", "maybe"),
        ("DRY_RUN", "2"),
        ("IN_PROCESS_WORKER", "enabled"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_value_is_rejected_naming_the_variable(name, value):
    error = problems({name: value})
    assert len(error.detail["problems"]) == 1
    assert error.detail["problems"][0].startswith(f"{name}=")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True)]
    + [("0", False), ("false", False), ("No", False), ("off", False)],
)
def test_booleans(value, expected):
    assert Settings.from_env({"DRY_RUN": value}).dry_run_requested is expected


def test_numbers_are_read():
    settings = Settings.from_env(
        {"DD_TIMEOUT": "2.5", "WORKER_CONCURRENCY": "8", "PORT": "5000", "WEB_CONCURRENCY": "3", "LOG_LEVEL": "debug"}
    )
    assert settings.dd_timeout == 2.5
    assert settings.worker_concurrency == 8
    assert isinstance(settings.worker_concurrency, int)
    assert (settings.port, settings.web_concurrency, settings.log_level) == (5000, 3, "DEBUG")


def test_settings_that_contradict_each_other_are_rejected():
    error = problems({"DELIVERY_BACKOFF_BASE": "60", "DELIVERY_BACKOFF_MAX": "10", "DD_TIMEOUT": "30"})
    assert len(error.detail["problems"]) == 2
    assert "DELIVERY_BACKOFF_BASE" in error.message
    assert "DELIVERY_LEASE" in error.message


def test_every_problem_is_reported_at_once():
    error = problems(
        {
            "DD_SITE": "datadoghq.org",
            "DD_API_KEY": "only-one-key",
            "DATABASE_URL": "mysql://db/caselink",
            "DD_TIMEOUT": "soon",
            "DRY_RUN": "perhaps",
        }
    )
    assert len(error.detail["problems"]) == 5
    for name in ("DD_SITE", "DD_APP_KEY", "DATABASE_URL", "DD_TIMEOUT", "DRY_RUN"):
        assert name in error.message
    assert error.to_dict()["error"]["problems"] == error.detail["problems"]


# -- webhook secrets ---------------------------------------------------------------------------


def test_a_webhook_secret_is_read_for_any_source():
    settings = Settings.from_env(
        {"PAGERDUTY_WEBHOOK_SECRET": "pd", "MY_TOOL_WEBHOOK_SECRET": "mine", "_WEBHOOK_SECRET": "nobody"}
    )
    assert set(settings.webhook_secrets) == {"pagerduty", "my_tool"}
    assert [secret.reveal() for secret in settings.secrets_for("pagerduty")] == ["pd"]
    assert [secret.reveal() for secret in settings.secrets_for("my_tool")] == ["mine"]
    assert settings.secrets_for("grafana") == ()


def test_comma_separated_values_give_several_secrets_for_rotation():
    settings = Settings.from_env({"GRAFANA_WEBHOOK_SECRET": " new-secret , old-secret,, "})
    secrets = settings.secrets_for("grafana")
    assert [secret.reveal() for secret in secrets] == ["new-secret", "old-secret"]
    assert all(isinstance(secret, Secret) for secret in secrets)


def test_an_empty_webhook_secret_is_no_secret():
    assert Settings.from_env({"DATADOG_WEBHOOK_SECRET": " , "}).secrets_for("datadog") == ()


# -- Secret ------------------------------------------------------------------------------------


def test_a_secret_never_shows_its_value():
    secret = Secret("hunter2-value")
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>30}", f"{secret!s}", f"{[secret]}"]
    assert all("hunter2-value" not in text for text in shown)
    assert "Secret" in repr(secret)


def test_settings_never_show_a_secret():
    settings = Settings.from_env(
        {**LIVE, "ADMIN_TOKEN": "admin-token-value", "DATADOG_WEBHOOK_SECRET": "hook-one,hook-two"}
    )
    shown = repr(settings) + str(settings)
    for value in ("api-key-value-1234", "app-key-value-5678", "admin-token-value", "hook-one", "hook-two"):
        assert value not in shown


def test_a_config_error_never_shows_a_secret():
    env = {
        "DD_API_KEY": "api-key-value-1234",
        "ADMIN_TOKEN": "admin-token-value",
        "DATADOG_WEBHOOK_SECRET": "hook-one,hook-two",
        "DD_API_URL": "https://user:proxy-password@",
        "DATABASE_URL": "mysql://user:db-password@db/caselink",
        "DD_TIMEOUT": "x",
    }
    error = problems(env)
    shown = " ".join([str(error), repr(error), error.message, json.dumps(error.to_dict())])
    for value in ("api-key-value-1234", "admin-token-value", "hook-one", "hook-two", "proxy-password", "db-password"):
        assert value not in shown


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("s3cret-é", True),
        ("s3cret-é".encode(), True),
        ("s3cret-e", False),
        ("s3cret-é ", False),
        ("", False),
        (None, False),
    ],
)
def test_secret_matches(candidate, expected):
    assert Secret("s3cret-é").matches(candidate) is expected


def test_secret_matches_in_constant_time(monkeypatch):
    seen = []

    def spy(a, b):
        seen.append((a, b))
        return a == b

    monkeypatch.setattr(config.hmac, "compare_digest", spy)

    assert Secret("token").matches("token") is True
    assert Secret("token").matches(b"other") is False
    assert seen == [(b"token", b"token"), (b"token", b"other")]


def test_secrets_compare_by_value_without_failing_on_non_ascii():
    assert Secret("clé") == Secret("clé")
    assert Secret("clé") != Secret("cle")
    assert Secret("a") != "a"
    assert hash(Secret("clé")) == hash(Secret("clé"))


@pytest.mark.parametrize(
    "url",
    ["postgresql://postgres:pw@127.0.0.1:abc/test", "postgres://u:pw@127.0.0.1:99999/test", "postgres://u:pw@/test"],
)
def test_postgres_urls_with_a_bad_port_or_no_host_are_refused_in_one_line(url):
    error = problems({"DATABASE_URL": url})
    assert "DATABASE_URL" in error.message
    assert "pw@" not in json.dumps(error.to_dict())


_PASSWORDS = st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=20).map(lambda p: f"Pw{p}")


@given(
    password=_PASSWORDS,
    where=st.sampled_from(["userinfo", "password", "sslpassword", "api_token", "Secret", "KEY"]),
)
def test_no_rendering_of_a_database_url_shows_its_password(password, where):
    from caselink.store import Store
    from caselink.store import describe_url

    if where == "userinfo":
        url = f"postgresql://postgres:{password}@127.0.0.1:5999/test?sslmode=disable"
    else:
        url = f"postgresql://postgres@127.0.0.1:5999/test?{where}={password}&sslmode=disable"
    settings = Settings.from_env({"DATABASE_URL": url})
    store = Store(settings.database_url)
    renderings = [describe_url(settings.database_url), store.describe(), config.display_url(settings.database_url)]
    assert all(password not in shown for shown in renderings), renderings
    assert all("127.0.0.1:5999/test" in shown for shown in renderings)


@pytest.mark.parametrize("url", ["sqlite:////var/lib/caselink.db", "sqlite:///caselink.db"])
def test_a_sqlite_url_is_described_as_it_was_given(url):
    from caselink.store import describe_url

    assert describe_url(url) == f"DATABASE_URL ({url})"
