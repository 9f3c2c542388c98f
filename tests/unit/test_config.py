"""Settings from three sources -- command line, ``ZEUS_*`` environment, TOML file -- with one
precedence, one parser per setting, and one-line errors that name the key and file:line."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from zeus.config import Settings, resolve
from zeus.config.options import FIELDS, cli_flag, env_var, meta
from zeus.config.reference import effective, markdown
from zeus.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "zeus.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_when_no_source_says_anything(tmp_path: Path) -> None:
    resolved = resolve({}, environ={}, cwd=tmp_path)
    assert resolved.settings == Settings()
    assert resolved.file is None and not resolved.origins


def test_command_line_beats_environment_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 3\ntimeout = 7\nkeep_alive = 9\n")
    environ = {"ZEUS_WORKERS": "4", "ZEUS_TIMEOUT": "8"}
    resolved = resolve({"workers": 5}, config_file=str(path), environ=environ, cwd=tmp_path)
    s = resolved.settings
    assert (s.workers, s.timeout, s.keep_alive) == (5, 8.0, 9.0)
    assert resolved.origins["workers"] == "command line"
    assert resolved.origins["timeout"] == "env ZEUS_TIMEOUT"
    assert resolved.origins["keep_alive"] == f"{path}:3"


def test_zeus_toml_in_the_working_directory_is_read_when_present(tmp_path: Path) -> None:
    write(tmp_path, "workers = 6\n")
    assert resolve({}, environ={}, cwd=tmp_path).settings.workers == 6


def test_zeus_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 7\n", "other.toml")
    resolved = resolve({}, environ={"ZEUS_CONFIG": str(path)}, cwd=tmp_path)
    assert resolved.settings.workers == 7 and resolved.file == path


def test_sizes_and_lists_parse_the_same_from_every_source(tmp_path: Path) -> None:
    path = write(tmp_path, 'memory_limit = "512M"\nbind = ["127.0.0.1:1", "unix:/tmp/z"]\n')
    from_file = resolve({}, config_file=str(path), environ={}, cwd=tmp_path).settings
    from_env = resolve({}, environ={"ZEUS_MEMORY_LIMIT": "512M",
                                    "ZEUS_BIND": "127.0.0.1:1, unix:/tmp/z"},
                       cwd=tmp_path).settings
    assert from_file.memory_limit == from_env.memory_limit == 512 << 20
    assert from_file.bind == from_env.bind == ("127.0.0.1:1", "unix:/tmp/z")


def test_tables_are_sections(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nworkers = 3\n[timeouts]\ntimeout = 2.5\n")
    s = resolve({}, config_file=str(path), environ={}, cwd=tmp_path).settings
    assert (s.workers, s.timeout) == (3, 2.5)


def test_web_concurrency_is_honoured_below_zeus_workers(tmp_path: Path) -> None:
    assert resolve({}, environ={"WEB_CONCURRENCY": "5"}, cwd=tmp_path).settings.workers == 5
    both = {"WEB_CONCURRENCY": "5", "ZEUS_WORKERS": "3"}
    assert resolve({}, environ=both, cwd=tmp_path).settings.workers == 3


@pytest.mark.parametrize(("text", "says"), [
    ("workers = 2\nwrokers = 3\n", ":2: unknown key 'wrokers' (did you mean 'workers'?)"),
    ("\n\nworkers = 0\n", ":3: workers: must be at least 1, got 0"),
    ('timeout = "soon"\n', ":1: timeout: invalid number of seconds 'soon'"),
    ('access_log = "yes"\n', ":1: access_log: expected true or false"),
    ('balance = "random"\n', ":1: balance: invalid choice 'random'"),
    ("[server]\nbind = [1.5]\n", ":2: bind: expected a string or an array of strings"),
    ('bind = ["localhost:http"]\n', ":1: bind: invalid bind 'localhost:http'"),
    ("[nope]\nworkers = 2\n", ":1: unknown table [nope]"),
    ("workers = \n", "invalid TOML"),
    ("[server]\nworkers = 2\n[limits]\nworkers = 3\n", ":4: 'workers' is set twice"),
])
def test_a_bad_file_is_one_line_naming_the_key_and_line(tmp_path: Path, text: str,
                                                        says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        resolve({}, config_file=str(path), environ={}, cwd=tmp_path)
    message = str(info.value)
    assert "\n" not in message and says in message and str(path) in message, message


def test_a_missing_file_named_explicitly_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        resolve({}, config_file=str(tmp_path / "absent.toml"), environ={}, cwd=tmp_path)


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ZEUS_MAX_RSS: invalid size 'big'"):
        resolve({}, environ={"ZEUS_MAX_RSS": "big"}, cwd=tmp_path)


def test_unknown_zeus_variables_are_reported_not_fatal(tmp_path: Path) -> None:
    resolved = resolve({}, environ={"ZEUS_WORKRS": "3", "ZEUS_CHANNEL_FD": "5"}, cwd=tmp_path)
    assert resolved.warnings == (
        "environment variable ZEUS_WORKRS is not a Zeus setting (did you mean 'workers'?)",)


def test_the_effective_configuration_is_toml_that_reads_back_the_same(tmp_path: Path) -> None:
    """check-config's output is itself a valid config file giving the same settings."""
    path = write(tmp_path, 'workers = 3\nmemory_limit = "1G"\naccess_log = true\n'
                           'bind = ["127.0.0.1:9000", "unix:/tmp/x.sock"]\napp = "a:b"\n')
    resolved = resolve({"timeout": 4.5}, config_file=str(path), environ={}, cwd=tmp_path)
    text = effective(resolved)
    tomllib.loads(text)  # valid TOML
    again = resolve({}, config_file=str(write(tmp_path, text, "again.toml")), environ={},
                    cwd=tmp_path)
    assert again.settings == resolved.settings
    assert f"workers = 3  # {path}:1" in text and "timeout = 4.5  # command line" in text


def test_the_reference_documents_every_setting() -> None:
    text = markdown()
    for field in dataclasses.fields(Settings):
        opt = meta(field.name)
        assert f"| `{field.name}` |" in text
        assert f"`{env_var(field.name)}`" in text
        if opt.cli:
            assert f"`{cli_flag(field.name)}`" in text
        assert opt.help and opt.section


def test_every_setting_has_a_parser_that_accepts_its_default_text() -> None:
    """Defaults survive the round trip through text (what check-config prints is valid)."""
    defaults = Settings()
    for name in FIELDS:
        opt, value = meta(name), getattr(defaults, name)
        if value is None or opt.flag:
            continue
        items = value if opt.multiple else (value,)
        for item in items:
            assert opt.parse(str(item)) == item, name
