"""The command-line contract: option names, env-var mirrors, validation, ADSP options."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from mlflow_bluegreen.proxy.cli import apply_adsp_http_options, main

SERVE = main.commands["serve"]


def parse(args: list[str]) -> dict[str, Any]:
    with SERVE.make_context("serve", args) as ctx:
        return dict(ctx.params)


def test_defaults_match_the_contract() -> None:
    params = parse(["-m", "models:/iris@champion"])
    assert params["host"] == "127.0.0.1"
    assert params["port"] == 8080
    assert params["admin_host"] == "127.0.0.1"
    assert params["admin_port"] == 8081
    assert params["env_manager"] == "local"
    assert params["poll_interval"] == 5.0
    assert params["startup_timeout"] == 600.0
    assert params["drain_timeout"] == 30.0
    assert params["tracking_uri"] is None


def test_every_option_reads_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "MLFLOW_BLUEGREEN_MODEL_URI": "models:/iris/Production",
        "MLFLOW_BLUEGREEN_HOST": "0.0.0.0",
        "MLFLOW_BLUEGREEN_PORT": "9000",
        "MLFLOW_BLUEGREEN_ADMIN_HOST": "127.0.0.2",
        "MLFLOW_BLUEGREEN_ADMIN_PORT": "9001",
        "MLFLOW_BLUEGREEN_TRACKING_URI": "http://registry:5000",
        "MLFLOW_BLUEGREEN_ENV_MANAGER": "uv",
        "MLFLOW_BLUEGREEN_WORKERS": "3",
        "MLFLOW_BLUEGREEN_TIMEOUT": "120",
        "MLFLOW_BLUEGREEN_POLL_INTERVAL": "2.5",
        "MLFLOW_BLUEGREEN_STARTUP_TIMEOUT": "900",
        "MLFLOW_BLUEGREEN_DRAIN_TIMEOUT": "10",
        "MLFLOW_BLUEGREEN_LOG_FORMAT": "json",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    params = parse([])
    assert params["model_uri"] == "models:/iris/Production"
    assert (params["host"], params["port"]) == ("0.0.0.0", 9000)
    assert (params["admin_host"], params["admin_port"]) == ("127.0.0.2", 9001)
    assert params["tracking_uri"] == "http://registry:5000"
    assert params["env_manager"] == "uv"
    assert (params["workers"], params["timeout"]) == (3, 120)
    assert params["poll_interval"] == 2.5
    assert (params["startup_timeout"], params["drain_timeout"]) == (900, 10)
    assert params["log_format"] == "json"


def test_flags_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_BLUEGREEN_PORT", "9000")
    assert parse(["-m", "x", "-p", "7000"])["port"] == 7000


def test_help_shows_the_env_vars() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for name in (
        "MODEL_URI",
        "PORT",
        "ADMIN_PORT",
        "ENV_MANAGER",
        "POLL_INTERVAL",
        "DRAIN_TIMEOUT",
    ):
        assert f"MLFLOW_BLUEGREEN_{name}" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "models:/a/b/c"], "Not a proper models:/ URI"),
        (["-m", "x", "--env-manager", "pip"], "'pip' is not one of"),
        (["-m", "x", "-p", "70000"], "70000 is not in the range"),
        (["-m", "x", "--poll-interval", "0"], "0"),
        ([], "Missing option '-m' / '--model-uri'"),
    ],
)
def test_bad_input_is_a_clear_usage_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_adsp_http_options_map_address_and_port_and_ignore_the_rest() -> None:
    params = parse(
        [
            "-m", "models:/iris@champion",
            "--anaconda-project-host", "a.example", "--anaconda-project-host", "b.example",
            "--anaconda-project-port", "8086",
            "--anaconda-project-address", "0.0.0.0",
            "--anaconda-project-url-prefix", "/p/123",
            "--anaconda-project-no-browser",
            "--anaconda-project-iframe-hosts", "c.example",
            "--anaconda-project-use-xheaders",
        ]
    )  # fmt: skip
    apply_adsp_http_options(params)
    assert (params["host"], params["port"]) == ("0.0.0.0", 8086)
    assert not any(k.startswith("anaconda_project") for k in params)


def test_swap_policy_and_memory_limit_parse_and_read_their_env_vars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = parse(["-m", "models:/iris@champion"])
    assert (defaults["swap_policy"], defaults["memory_limit"]) == ("availability", None)
    sizes = {"2147483648": 2**31, "512Mi": 512 * 2**20, "2G": 2 * 10**9, "1.5gib": 3 * 2**29}
    for text, size in sizes.items():
        assert parse(["-m", "models:/iris/1", "--memory-limit", text])["memory_limit"] == size
    monkeypatch.setenv("MLFLOW_BLUEGREEN_SWAP_POLICY", "auto")
    monkeypatch.setenv("MLFLOW_BLUEGREEN_MEMORY_LIMIT", "1Gi")
    params = parse(["-m", "models:/iris/1"])
    assert (params["swap_policy"], params["memory_limit"]) == ("auto", 2**30)


@pytest.mark.parametrize(
    "args",
    [["--swap-policy", "fastest"], ["--memory-limit", "lots"], ["--memory-limit", "0"]],
)
def test_bad_swap_policy_or_memory_limit_is_a_usage_error(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["serve", "-m", "models:/iris/1", *args])
    assert result.exit_code == 2
    assert args[0] in result.output
