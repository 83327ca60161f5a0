from __future__ import annotations

import argparse
import pathlib

import pytest

from broker import exceptions, flags
from broker.flags import Flag, add_flags, load_toml, resolve

FLAGS = [Flag("db-dsn", "dsn", "sqlite:///x"), Flag("lease-s", "lease", 60.0, float),
         Flag("resource-type", "kind", "fs", choices=("fs", "db"))]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, FLAGS)
    return parser.parse_args(argv)


def test_precedence_is_cli_then_env_then_file_then_default() -> None:
    file = {"db-dsn": "from-file", "lease-s": 5}
    env = {"GPUPROXY_DB_DSN": "from-env"}
    values = resolve(parse(["--db-dsn", "from-cli"]), FLAGS, file, env)
    assert values["db_dsn"] == "from-cli"
    values = resolve(parse([]), FLAGS, file, env)
    assert values == {"db_dsn": "from-env", "lease_s": 5.0, "resource_type": "fs"}
    assert resolve(parse([]), FLAGS, {}, {})["lease_s"] == 60.0


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(exceptions.ConfigError, match="GPUPROXY_LEASE_S"):
        resolve(parse([]), FLAGS, {}, {"GPUPROXY_LEASE_S": "soon"})
    with pytest.raises(exceptions.ConfigError, match="resource-type"):
        resolve(parse([]), FLAGS, {}, {"GPUPROXY_RESOURCE_TYPE": "nfs"})


def test_unknown_config_keys_are_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text('db_dsn = "sqlite:///a"\nlease = 3\ndb-dns = "x"\n')
    with pytest.raises(exceptions.ConfigError) as info:
        resolve(parse([]), FLAGS, load_toml(str(path)), {})
    # A typo is named with the key it most likely meant
    assert "db-dns (did you mean db-dsn?), lease (did you mean lease-s?)" in str(info.value)


def test_unreadable_config_file_is_named(tmp_path: pathlib.Path) -> None:
    with pytest.raises(exceptions.ConfigError, match=r"missing\.toml"):
        load_toml(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("= nope")
    with pytest.raises(exceptions.ConfigError, match="not TOML"):
        load_toml(str(bad))


@pytest.mark.parametrize("text", ["127.0.0.1:18888", "http://10.0.0.5:18888", "[::1]:18888",
                                  "broker:18888", "grpc://h:1/", "https://broker.lan:443"])
def test_a_broker_address_is_kept_as_written(text: str) -> None:
    assert flags.address(text) == text


@pytest.mark.parametrize("text", ["127.0.0.1:84646", "127.0.0.1", "ftp://h:1", "", ":18888",
                                  "h:0", "h:port"])
def test_an_address_that_cannot_be_right_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        flags.address(text)


def test_brokers_sharing_a_database_are_a_comma_separated_list_of_addresses() -> None:
    assert flags.addresses("10.0.0.5:18888") == "10.0.0.5:18888"
    assert flags.addresses("http://a:1, b:2 ,https://c:3") == "http://a:1,b:2,https://c:3"
    with pytest.raises(ValueError, match="'b:84646' is not HOST:PORT"):
        flags.addresses("a:1,b:84646")
    with pytest.raises(ValueError, match="an empty address in the list"):
        flags.addresses("a:1,,b:2")
    with pytest.raises(ValueError, match="listed twice"):
        flags.addresses("a:1,http://a:1")
    with pytest.raises(ValueError, match="HOST:PORT"):
        flags.addresses("")
    for spaced in ("a:1 b:2", "a:1;b:2"):
        with pytest.raises(ValueError, match="separate the brokers with commas"):
            flags.addresses(spaced)
    # A config file may give them as a TOML array
    url = [Flag("gpuproxy-url", "brokers", "127.0.0.1:18888", flags.addresses)]
    parser = argparse.ArgumentParser()
    add_flags(parser, url)
    assert resolve(parser.parse_args([]), url, {"gpuproxy-url": ["a:1", "b:2"]},
                   {})["gpuproxy_url"] == "a:1,b:2"


def test_a_listen_address_may_take_any_free_port() -> None:
    assert flags.listen_address("127.0.0.1:0") == "127.0.0.1:0"
    for text in ("0.0.0.0:65536", ":9100", "https://0.0.0.0:18888", "http://0.0.0.0:18888"):
        with pytest.raises(ValueError):
            flags.listen_address(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_seconds_must_be_finite(text: str) -> None:
    with pytest.raises(ValueError, match="finite"):
        flags.seconds(text)


def test_a_relative_sqlite_path_is_made_absolute_and_said(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import structlog

    from broker import cli

    monkeypatch.chdir(tmp_path)
    values = resolve(argparse.ArgumentParser().parse_args([]), cli.RUN_FLAGS, {}, {})
    with structlog.testing.capture_logs() as logs:
        config = cli.broker_config_from({**values, "db_dsn": "sqlite:///tmp/gpuproxy.db"})
        absolute = cli.broker_config_from({**values, "db_dsn": "sqlite:////srv/gpuproxy.db"})
    # Started elsewhere, the broker would open another, empty database: the path is fixed
    assert config.db_dsn == f"sqlite:///{tmp_path}/tmp/gpuproxy.db"
    assert absolute.db_dsn == "sqlite:////srv/gpuproxy.db"
    [said] = logs
    assert "write sqlite:////ABSOLUTE/PATH" in said["event"]
    assert said["file"] == f"{tmp_path}/tmp/gpuproxy.db"


def test_a_flag_must_be_spelled_whole() -> None:
    from broker import cli

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["tasks", "list", "--stat", "init"])
    assert cli.build_parser().parse_args(["tasks", "list", "--state", "init"]).state


def test_numbers_past_the_protocols_32_bit_fields_are_refused_where_they_are_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Once stored, an attempts count past 2^31 would break every listing of the task
    from broker import cli, tasks

    values = resolve(argparse.ArgumentParser().parse_args([]), cli.RUN_FLAGS, {}, {})
    for field, value in (("max_attempts", 99999999999),
                         ("type_max_attempts", "c2=99999999999")):
        with pytest.raises(exceptions.ConfigError, match="must be 1 to 1000"):
            cli.broker_config_from({**values, field: value})
    header = tasks.SubmitHeader(task_type="noop", miner="f01000", comment="", priority=0,
                                payload_size=1, payload_sha256="0" * 64, max_attempts=1001)
    with pytest.raises(exceptions.InvalidArgument, match="max_attempts must be 0"):
        tasks.validate_header(header, 1 << 30)
    for flag in ("--priority", "--max-attempts"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["tasks", "submit", "--type", "noop", "f",
                                           flag, "99999999999"])
        assert "99999999999 is not from" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["tasks", "submit", "--type", "noop", "f",
                                          "--priority", "-5", "--max-attempts", "1000"])
    assert (args.priority, args.max_attempts) == (-5, 1000)


def test_a_flag_the_subcommand_does_not_take_is_refused_with_its_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from broker import cli

    for argv, usage in ((["run", "--bogus"], "usage: gpuproxy run "),
                        (["tasks", "list", "--bogus", "x"], "usage: gpuproxy tasks list ")):
        with pytest.raises(SystemExit) as info:
            flags.parse_args(cli.build_parser(), argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith(usage)
        assert f"unrecognized arguments: {' '.join(argv[argv.index('--bogus'):])}" in err
    assert flags.parse_args(cli.build_parser(), ["tasks", "list", "--state", "init"]).state
