"""The typed configuration: the rendered file loads, every error names its key, where the file is found."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mssecure.config import (
    CONFIG_ENV,
    Config,
    DatabaseConfig,
    OperatorConfig,
    PathsConfig,
    find_config_file,
    load_config,
    render_config,
    validate_domain,
)
from mssecure.errors import ConfigError

MINIMAL = """\
[operator]
domain = "chu-nord.mssante.test"
hostname = "mail.chu-nord.mssante.test"
"""


def write_config(directory: Path, text: str, name: str = "mssecure.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load(directory: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write_config(directory, text), environ={} if environ is None else environ)


# --- render_config and load_config -------------------------------------------------------------------------------


def test_the_rendered_configuration_loads_with_the_examples(tmp_path: Path) -> None:
    path = write_config(tmp_path, render_config())
    config = load_config(path, environ={})
    assert config.operator == OperatorConfig(
        domain="chu-nord.mssante.test", hostname="mail.chu-nord.mssante.test", extra_domains=()
    )
    assert config.database == DatabaseConfig(url="sqlite:///mssecure.db")
    assert config.paths == PathsConfig(data_dir="data")
    assert config.source == path.resolve()


def test_the_rendered_configuration_loads_with_given_values(tmp_path: Path) -> None:
    values = {
        "operator": {"domain": "ght-sud.mssante.test", "hostname": "relay.ght-sud.mssante.test",
                     "extra_domains": ("pharmacien.mssante.test", "infirmier.mssante.test")},
        "database": {"url": "postgresql://mssecure@db.internal/mssecure"},
        "paths": {"data_dir": "/var/lib/mssecure"},
    }  # fmt: skip
    config = load(tmp_path, render_config(values))
    assert config.operator.domain == "ght-sud.mssante.test"
    assert config.operator.hostname == "relay.ght-sud.mssante.test"
    assert config.operator.extra_domains == ("pharmacien.mssante.test", "infirmier.mssante.test")
    assert config.database.url == "postgresql://mssecure@db.internal/mssecure"
    assert config.data_dir == Path("/var/lib/mssecure")


def test_the_rendered_configuration_documents_every_key_and_the_env_override() -> None:
    text = render_config()
    for line in ("[operator]", "[database]", "[paths]", "domain = ", "hostname = ", "extra_domains = []",
                 'url = "sqlite:///mssecure.db"', 'data_dir = "data"', "# Environment override: MSSECURE_DATABASE_URL",
                 "# Required."):  # fmt: skip
        assert line in text
    assert all(len(line) <= 102 for line in text.splitlines())


def test_the_example_file_in_the_repository_is_the_rendered_configuration() -> None:
    example = Path(__file__).parents[3] / "config" / "mssecure.example.toml"
    assert example.read_text(encoding="utf-8") == render_config()


def test_a_minimal_configuration_takes_the_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)
    assert config.operator.extra_domains == ()
    assert config.database.url == "sqlite:///mssecure.db"
    assert config.paths.data_dir == "data"
    assert config.base_dir == tmp_path.resolve()
    assert config.data_dir == tmp_path.resolve() / "data"


def test_domains_are_lowercased_and_lose_a_trailing_dot(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL.replace('"chu-nord.mssante.test"', '"CHU-Nord.MSSante.test."'))
    assert config.operator.domain == "chu-nord.mssante.test"


def test_operator_domains_include_the_extra_domains(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + 'extra_domains = ["Pharmacien.mssante.test", "infirmier.mssante.test"]\n')
    assert config.operator.domains == frozenset(
        {"chu-nord.mssante.test", "pharmacien.mssante.test", "infirmier.mssante.test"}
    )


def test_operator_domains_is_the_domain_alone_without_extra_domains() -> None:
    operator = OperatorConfig(domain="chu-nord.mssante.test", hostname="mail.chu-nord.mssante.test")
    assert operator.domains == frozenset({"chu-nord.mssante.test"})


# --- load_config: every error names the key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL + "[bogus]\nkey = 1\n",
            r"unknown section \[bogus\] \(known: operator, database, paths, pki, dkim, smtp, auth, delivery, archive\)",
        ),
        (MINIMAL + "bogus = 1\n", r"unknown key operator\.bogus \(known: domain, hostname, extra_domains\)"),
        (MINIMAL + "[database]\nuri = 'sqlite:///x.db'\n", r"unknown key database\.uri"),
        (MINIMAL + "[operator.sub]\nx = 1\n", r"unknown key operator\.sub"),
        ("operator = 3\n", r": operator must be a table \(\[operator\]\)"),
        (MINIMAL + "[paths]\ndata_dir = 3\n", r": paths\.data_dir must be a string$"),
        (MINIMAL.replace('"chu-nord.mssante.test"', "42"), r": operator\.domain must be a string$"),
        (
            MINIMAL + "extra_domains = 'pharmacien.mssante.test'\n",
            r": operator\.extra_domains must be a list of strings",
        ),
        (MINIMAL + "extra_domains = [1]\n", r": operator\.extra_domains must be a list of strings"),
        (MINIMAL.replace('"chu-nord.mssante.test"', '"not a domain"'), r": operator\.domain: 'not a domain' is not a"),
        (MINIMAL.replace('"chu-nord.mssante.test"', '"localhost"'), r": operator\.domain: 'localhost' is not a"),
        (MINIMAL.replace('"chu-nord.mssante.test"', '"192.0.2.1"'), r": operator\.domain: '192\.0\.2\.1' is not a"),
        (MINIMAL.replace('"mail.chu-nord.mssante.test"', '"mail_relay.test"'), r": operator\.hostname: "),
        (MINIMAL + "extra_domains = ['ok.test', '-bad.test']\n", r": operator\.extra_domains: '-bad\.test' is not"),
        ("", r"missing required key operator\.domain \(Main mail domain"),
        ("[operator]\nhostname = 'mail.chu-nord.mssante.test'\n", r"missing required key operator\.domain"),
        ("[operator]\ndomain = 'chu-nord.mssante.test'\n", r"missing required key operator\.hostname"),
        (MINIMAL + "[database]\nurl = 'mysql://db/mssecure'\n", r": database\.url: must start with sqlite:/// or"),
        (MINIMAL + "[database]\nurl = 'mssecure.db'\n", r": database\.url: must start with sqlite:/// or"),
        (MINIMAL + "[database]\nurl = 5\n", r": database\.url must be a string$"),
    ],
)
def test_load_config_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "url",
    ["sqlite:///mssecure.db", "sqlite:///:memory:", "sqlite+pysqlite:////var/lib/m.db", "postgresql://u@h/db",
     "postgresql+psycopg://u@h:5433/db"],
)  # fmt: skip
def test_load_config_accepts_sqlite_and_postgresql_urls(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, MINIMAL + f"[database]\nurl = '{url}'\n").database.url == url


def test_load_config_refuses_a_file_that_is_not_toml(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[operator\ndomain = chu-nord\n")
    with pytest.raises(ConfigError, match=rf"^configuration file {re.escape(str(path))} is not valid TOML: "):
        load_config(path, environ={})


def test_load_config_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "mssecure.toml"
    path.write_bytes(MINIMAL.encode() + "# Hôpital\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"^configuration file {re.escape(str(path))} is not UTF-8$"):
        load_config(path, environ={})


def test_load_config_refuses_a_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read configuration file .*absent\.toml: "):
        load_config(tmp_path / "absent.toml", environ={})
    with pytest.raises(ConfigError, match=r"^cannot read configuration file "):
        load_config(tmp_path, environ={})


# --- environment overrides ---------------------------------------------------------------------------------------


def test_the_environment_overrides_the_database_url(tmp_path: Path) -> None:
    environ = {"MSSECURE_DATABASE_URL": "postgresql://mssecure:secret@db/mssecure"}
    config = load(tmp_path, MINIMAL + "[database]\nurl = 'sqlite:///file.db'\n", environ)
    assert config.database.url == "postgresql://mssecure:secret@db/mssecure"
    assert config.database_url == "postgresql://mssecure:secret@db/mssecure"


def test_the_environment_override_applies_when_the_file_omits_the_key(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL, {"MSSECURE_DATABASE_URL": "postgresql://u@h/db"})
    assert config.database.url == "postgresql://u@h/db"


def test_an_empty_environment_variable_does_not_override(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "[database]\nurl = 'sqlite:///file.db'\n", {"MSSECURE_DATABASE_URL": ""})
    assert config.database.url == "sqlite:///file.db"


def test_an_invalid_override_names_the_environment_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r": \$MSSECURE_DATABASE_URL: must start with sqlite:///"):
        load(tmp_path, MINIMAL, {"MSSECURE_DATABASE_URL": "mysql://db"})


def test_load_config_reads_the_given_environ_not_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSSECURE_DATABASE_URL", "postgresql://from-process@h/db")
    assert load(tmp_path, MINIMAL, {}).database.url == "sqlite:///mssecure.db"
    path = write_config(tmp_path, MINIMAL)
    assert load_config(path).database.url == "postgresql://from-process@h/db"


# --- database_url ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "relative"),
    [("sqlite:///mssecure.db", "mssecure.db"), ("sqlite:///state/m.db", "state/m.db"),
     ("sqlite+pysqlite:///m.db", "m.db")],
)  # fmt: skip
def test_a_relative_sqlite_path_is_relative_to_the_config_file(tmp_path: Path, url: str, relative: str) -> None:
    (tmp_path / "etc").mkdir()
    path = write_config(tmp_path / "etc", MINIMAL + f"[database]\nurl = '{url}'\n")
    config = load_config(path, environ={})
    prefix = url.split(":///")[0]
    assert config.database_url == f"{prefix}:///{tmp_path.resolve() / 'etc' / relative}"
    assert config.database.url == url  # the loaded value itself is kept as written


@pytest.mark.parametrize(
    "url",
    ["sqlite:///:memory:", "sqlite:////var/lib/mssecure/m.db", "sqlite://", "sqlite:///file:m.db?mode=ro&uri=true",
     "postgresql://u@h/db"],
)  # fmt: skip
def test_memory_absolute_and_server_urls_are_kept(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, MINIMAL + f"[database]\nurl = '{url}'\n").database_url == url


# --- find_config_file --------------------------------------------------------------------------------------------


@pytest.fixture
def three_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """An explicit file, a file named by $MSSECURE_CONFIG, and ./mssecure.toml in the working directory."""
    for name in ("explicit", "env", "cwd"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return (
        write_config(tmp_path / "explicit", MINIMAL, "chosen.toml"),
        write_config(tmp_path / "env", MINIMAL, "from-env.toml"),
        write_config(tmp_path / "cwd", MINIMAL),
    )


def test_find_config_file_prefers_the_explicit_path(three_configs: tuple[Path, Path, Path]) -> None:
    explicit, env, _ = three_configs
    assert find_config_file(str(explicit), {CONFIG_ENV: str(env)}) == explicit.resolve()
    assert find_config_file(explicit, {CONFIG_ENV: str(env)}) == explicit.resolve()


def test_find_config_file_then_takes_the_environment(three_configs: tuple[Path, Path, Path]) -> None:
    _, env, _ = three_configs
    assert find_config_file(None, {CONFIG_ENV: str(env)}) == env.resolve()
    assert find_config_file("", {CONFIG_ENV: str(env)}) == env.resolve()


def test_find_config_file_then_takes_the_working_directory(three_configs: tuple[Path, Path, Path]) -> None:
    _, _, cwd = three_configs
    assert find_config_file(None, {}) == cwd.resolve()
    assert find_config_file(None, {CONFIG_ENV: ""}) == cwd.resolve()
    assert find_config_file(None, {}).is_absolute()


def test_find_config_file_resolves_a_relative_explicit_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, MINIMAL, "relative.toml")
    monkeypatch.chdir(tmp_path)
    assert find_config_file("relative.toml", {}) == (tmp_path / "relative.toml").resolve()


def test_find_config_file_says_where_it_looked_when_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        find_config_file(None, {})
    message = str(caught.value)
    assert message.startswith("no configuration: --config was not given, $MSSECURE_CONFIG is not set")
    assert "./mssecure.toml does not exist" in message
    assert "mssecure init" in message


def test_find_config_file_does_not_take_a_directory_named_like_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mssecure.toml").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^no configuration: "):
        find_config_file(None, {})


@pytest.mark.parametrize(
    ("explicit", "environ", "origin"),
    [("missing.toml", {}, "--config"), (None, {CONFIG_ENV: "missing.toml"}, "$MSSECURE_CONFIG"),
     ("missing.toml", {CONFIG_ENV: "mssecure.toml"}, "--config")],
)  # fmt: skip
def test_find_config_file_names_where_a_missing_path_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, explicit: str | None, environ: dict[str, str], origin: str
) -> None:
    write_config(tmp_path, MINIMAL)  # ./mssecure.toml exists but is not a fallback for a named file
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        find_config_file(explicit, environ)
    assert str(caught.value) == f"configuration file missing.toml (from {origin}) does not exist"


def test_find_config_file_reads_the_given_environ_not_the_process_environment(
    three_configs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env, cwd = three_configs
    monkeypatch.setenv(CONFIG_ENV, str(env))
    assert find_config_file(None, {}) == cwd.resolve()
    assert find_config_file(None) == env.resolve()


# --- validate_domain ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "domain"),
    [("chu-nord.mssante.test", "chu-nord.mssante.test"), (" CHU-Nord.MSSante.Test. ", "chu-nord.mssante.test"),
     ("a.b", "a.b"), ("xn--hpital-3ua.fr", "xn--hpital-3ua.fr"), ("1.example.fr", "1.example.fr")],
)  # fmt: skip
def test_validate_domain_lowercases_fully_qualified_names(value: str, domain: str) -> None:
    assert validate_domain(value) == domain


@pytest.mark.parametrize(
    "value",
    ["", ".", "localhost", "chu nord.test", "chu_nord.test", "-chu.test", "chu-.test", "chu..test", "hôpital.fr",
     "192.0.2.1", "chu.123", "c" * 64 + ".test", ".".join(["c" * 63] * 4)],
)  # fmt: skip
def test_validate_domain_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError, match=r"is not a fully qualified domain name"):
        validate_domain(value)


def test_relay_sections_default_and_validate(tmp_path: Path) -> None:
    path = tmp_path / "mssecure.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    config = load_config(path, environ={})
    assert config.smtp.inbound_port == 25
    assert config.relay_endpoint == f"{config.operator.hostname}:25"
    assert config.delivery.retry_schedule == (60, 300, 900, 1800, 3600, 7200)
    assert config.maildir == tmp_path / "data" / "mail"
    for section, bad, message in [
        ("smtp", "inbound_port = 70000", "smtp.inbound_port: must be a TCP port"),
        ("smtp", 'relay_endpoint = "no port"', "smtp.relay_endpoint: must be host:port"),
        ("delivery", "retry_schedule = []", "delivery.retry_schedule: must be a non-empty list"),
        ("delivery", 'retry_schedule = ["1m"]', "delivery.retry_schedule must be a list of integers"),
        ("auth", 'require_client_cert = "yes"', "auth.require_client_cert must be true or false"),
    ]:
        path.write_text(MINIMAL + f"[{section}]\n{bad}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, environ={})
