"""`mlflow-bluegreen`: the command line. Each `serve` option also reads MLFLOW_BLUEGREEN_<NAME>."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from ..worker.control import SwapPolicy
from ..worker.model.uri import BadModelUri, parse_model_uri
from ..worker.tracking.registry import CLIENT_ENV_DEFAULTS
from .config import Config
from .operator import reload, resume, rollback, status

ENV_PREFIX = "MLFLOW_BLUEGREEN_"
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper().replace("-", "_")


def option(*decls: str, env: str, **kwargs: Any) -> Callable[[Any], Any]:
    """A click option mirrored by MLFLOW_BLUEGREEN_<env>, shown in --help."""
    return click.option(*decls, envvar=_env(env), show_envvar=True, show_default=True, **kwargs)


_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def _parse_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    """A size: bytes, or a number with a decimal (K, M, G) or binary (Ki, Mi, Gi) suffix."""
    if value is None:
        return None
    text = value.strip().lower().removesuffix("b")
    number = text.rstrip("kmgi")
    try:
        size = float(number) * _SIZE_UNITS[text[len(number) :]]
    except (KeyError, ValueError):
        raise click.BadParameter(f"{value!r} is not a size (bytes, or e.g. 512Mi, 2G)") from None
    if size <= 0:
        raise click.BadParameter(f"{value!r} is not a positive size")
    return int(size)


def _check_model_uri(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        parse_model_uri(value)
    except BadModelUri as error:
        raise click.BadParameter(str(error)) from error
    return value.strip()


def adsp_http_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options anaconda-project passes to a command with `supports_http_options: true`.
    Address and port decide where the public port listens; the rest concern a browser UI,
    which a model server has not, and are accepted and ignored."""
    for name in ("host", "iframe-hosts"):
        command = click.option(f"--anaconda-project-{name}", multiple=True, hidden=True)(command)
    for name in ("address", "url-prefix"):
        command = click.option(f"--anaconda-project-{name}", default=None, hidden=True)(command)
    command = click.option(
        "--anaconda-project-port", type=click.IntRange(1, 65535), default=None, hidden=True
    )(command)
    for name in ("no-browser", "use-xheaders"):
        command = click.option(f"--anaconda-project-{name}", is_flag=True, hidden=True)(command)
    return command


def apply_adsp_http_options(options: dict[str, Any]) -> None:
    """The platform's address and port win over ours: it routes traffic to what it chose."""
    adsp = {k: options.pop(k) for k in list(options) if k.startswith("anaconda_project_")}
    if adsp["anaconda_project_address"]:
        options["host"] = adsp["anaconda_project_address"]
    if adsp["anaconda_project_port"] is not None:
        options["port"] = adsp["anaconda_project_port"]


def require_token_off_loopback(admin_host: str, admin_token: str | None) -> None:
    """An admin port reachable from other hosts can trigger swaps: never without a token."""
    if admin_token or is_loopback(admin_host):
        return
    raise click.UsageError(
        f"--admin-host {admin_host} is reachable from other machines: set --admin-token "
        "(or MLFLOW_BLUEGREEN_ADMIN_TOKEN) so that POST /reload, /rollback and /resume need it."
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mlflow-bluegreen")
def main() -> None:
    """Serve an MLflow model and swap versions blue/green with zero failed requests."""


@main.command(context_settings={"help_option_names": ["--help"]})
@option(
    "-m",
    "--model-uri",
    env="model_uri",
    required=True,
    callback=_check_model_uri,
    help="Any MLflow model URI. models:/name@alias, models:/name/<stage> and "
    "models:/name/latest are tracked and swapped when the registry moves; any other URI "
    "is served as it is.",
)
@option("--host", env="host", default="127.0.0.1", help="Address of the public port.")
@option(
    "-p",
    "--port",
    env="port",
    default=8080,
    type=click.IntRange(1, 65535),
    help="Public port: the MLflow scoring protocol.",
)
@option(
    "--admin-host",
    env="admin_host",
    default="127.0.0.1",
    help="Address of the admin port (status, metrics, reload).",
)
@option(
    "--admin-port",
    env="admin_port",
    default=8081,
    type=click.IntRange(1, 65535),
    help="Admin port.",
)
@option(
    "--tracking-uri",
    env="tracking_uri",
    default=None,
    help="MLflow tracking/registry server. Default: MLFLOW_TRACKING_URI, as MLflow does.",
)
@option(
    "--env-manager",
    env="env_manager",
    default="local",
    type=click.Choice(ENV_MANAGERS),
    help="How `mlflow models serve` provides the model's "
    "dependencies: the current environment (local) or one it builds.",
)
@option(
    "-w",
    "--workers",
    env="workers",
    default=1,
    type=click.IntRange(1),
    help="uvicorn workers per `mlflow models serve`.",
)
@option(
    "-t",
    "--timeout",
    env="timeout",
    default=60,
    type=click.IntRange(1),
    help="Seconds a worker may take to answer one request; also how long a client may take "
    "to send a request body, or stall reading an answer, before it is cut off.",
)
@option(
    "--poll-interval",
    env="poll_interval",
    default=5.0,
    type=click.FloatRange(min=0.1),
    help="Seconds between registry lookups of a tracked URI.",
)
@option(
    "--startup-timeout",
    env="startup_timeout",
    default=600.0,
    type=click.FloatRange(min=1),
    help="Seconds a new worker may take to become ready (environment builds can take minutes).",
)
@option(
    "--drain-timeout",
    env="drain_timeout",
    default=30.0,
    type=click.FloatRange(min=0),
    help="Seconds to let in-flight requests finish on a worker being replaced, and on shutdown.",
)
@option(
    "--shutdown-delay",
    env="shutdown_delay",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Seconds to keep serving after SIGTERM with /ping answering 503, so a load balancer "
    "(Kubernetes endpoints) stops sending traffic before the port closes.",
)
@option(
    "--queue-timeout",
    env="queue_timeout",
    default=30.0,
    type=click.FloatRange(min=0),
    help="Seconds a request waits for a ready worker while the active one is restarted, "
    "instead of failing at once.",
)
@option(
    "--max-body-size",
    env="max_body_size",
    default=64 * 1024 * 1024,
    type=click.IntRange(min=1),
    help="Largest request body in bytes; a larger one gets 413 and is not forwarded.",
)
@option(
    "--keepalive-timeout",
    env="keepalive_timeout",
    default=75.0,
    type=click.FloatRange(min=1),
    help="Seconds a client connection may stay idle, or take to send a request's headers, "
    "before it is closed.",
)
@option(
    "--linger",
    env="linger",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Seconds the replaced version's worker stays up, without traffic, after a swap: "
    "moving back to it (alias, POST /rollback) is then instant, and it takes over at once if "
    "the new worker dies or fails health checks. 0 stops it at once; costs its memory.",
)
@option(
    "--crash-window",
    env="crash_window",
    default=60.0,
    type=click.FloatRange(min=0),
    help="An active worker that exits within this many seconds of taking traffic, twice in a "
    "row, makes its version count as failed: it backs off and the version that served before "
    "it serves meanwhile. 0: every exit is restarted at once.",
)
@option(
    "--allow-signature-change/--no-allow-signature-change",
    env="allow_signature_change",
    default=False,
    help="Let a version whose input signature would break current callers (a removed, "
    "retyped or new required input) take traffic. Off: such a swap is blocked.",
)
@option(
    "--swap-policy",
    env="swap_policy",
    default="availability",
    type=click.Choice([p.value for p in SwapPolicy]),
    help="availability: a new version starts beside the old one (two models in memory for a "
    "moment, no wait). memory: the old one drains and stops first; requests meanwhile wait "
    "(up to --queue-timeout) and are answered by the new version. auto: memory when what is "
    "left under the memory limit would not hold 1.3x the active worker's RSS.",
)
@option(
    "--memory-limit",
    env="memory_limit",
    default=None,
    callback=_parse_size,
    metavar="SIZE",
    help="The sidecar's memory limit for --swap-policy auto, in bytes or with a suffix "
    "(512Mi, 2G). Default: its cgroup's memory.max.",
)
@option(
    "--direct-start/--no-direct-start",
    env="direct_start",
    default=True,
    help="Start a local model's scoring server as `mlflow models serve` would (uvicorn on "
    "MLflow's scoring app), without the CLI process that only imports MLflow to do so. "
    "Off: every worker is a `mlflow models serve`.",
)
@option(
    "--spare/--no-spare",
    env="spare",
    default=True,
    help="Keep one pre-warmed interpreter that has imported MLflow's scoring server, made a "
    "while after each swap at low CPU priority, so the next version's worker only loads its "
    "model (local env manager, one uvicorn worker). Costs that interpreter's memory.",
)
@option(
    "--canary-percent",
    env="canary_percent",
    default=0.0,
    type=click.FloatRange(min=0, max=100, max_open=True),
    help="Share of live traffic (in %) a ready new version answers for --canary-seconds "
    "before the full switch; 0 switches at once.",
)
@option(
    "--canary-seconds",
    env="canary_seconds",
    default=60.0,
    type=click.FloatRange(min=0, min_open=True),
    help="How long a canary runs before it is judged.",
)
@option(
    "--canary-max-error-increase",
    env="canary_max_error_increase",
    default=0.01,
    type=click.FloatRange(min=0, max=1),
    help="A new version whose share of non-2xx answers (4xx and 5xx, timeouts) exceeds the "
    "old version's on the same traffic by more than this fraction (and by more than chance "
    "explains) is rejected by the canary, or rolled back by --auto-rollback.",
)
@option(
    "--canary-max-latency-ratio",
    env="canary_max_latency_ratio",
    default=2.0,
    type=click.FloatRange(min=1, min_open=True),
    help="A new version whose p99 latency exceeds the old version's times this is rejected "
    "by the canary, or rolled back by --auto-rollback.",
)
@option(
    "--canary-min-requests",
    env="canary_min_requests",
    default=20,
    type=click.IntRange(min=1),
    help="Answers each arm (old, new) needs before a verdict. A canary (or shadow run) with "
    "fewer runs on, up to 3 times its seconds; then the version is promoted, and its history "
    "says 'unjudged'.",
)
@option(
    "--shadow-percent",
    env="shadow_percent",
    default=0.0,
    type=click.FloatRange(min=0, max=100),
    help="Once a new version is ready and warm, also send it a copy of this share (in %) of "
    "live predictions for --shadow-seconds, before any canary or the switch. Clients get the "
    "active version's answer only; the two answers are compared. 0: no shadow.",
)
@option(
    "--shadow-seconds",
    env="shadow_seconds",
    default=30.0,
    type=click.FloatRange(min=0, min_open=True),
    help="How long the shadow copies go on.",
)
@option(
    "--shadow-tolerance",
    env="shadow_tolerance",
    default=1e-6,
    type=click.FloatRange(min=0),
    help="Relative difference allowed between numbers in the two versions' JSON answers.",
)
@option(
    "--shadow-min-agreement",
    env="shadow_min_agreement",
    default=0.0,
    type=click.FloatRange(min=0, max=1),
    help="Share of shadowed requests (0 to 1) the new version must answer as the active one "
    "did (same status; same values), or it is rejected before taking any traffic. 0: report "
    "only.",
)
@option(
    "--auto-rollback/--no-auto-rollback",
    env="auto_rollback",
    default=False,
    help="For the --linger window after each switch, compare the new version with what the "
    "previous one answered in as long before it (non-2xx share and p99, the canary's limits); "
    "on a regression, switch back to the lingering worker at once. The version is not tried "
    "again until the registry names another and then it again, or POST /reload. Needs "
    "--linger.",
)
@option(
    "--admin-token",
    env="admin_token",
    default=None,
    help="Bearer token required by POST /reload, /rollback and /resume. Required when "
    "--admin-host is not a loopback address.",
)
@option(
    "--webhook-secret",
    env="webhook_secret",
    default=None,
    help="Secret of the MLflow registry webhook that posts to /webhook (HMAC-SHA256 check).",
)
@option(
    "--log-format",
    env="log_format",
    default="text",
    type=click.Choice(["text", "json"]),
    help="Log lines as text or one JSON object each.",
)
@option(
    "--log-level",
    env="log_level",
    default="INFO",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Least severe level logged.",
)
@option(
    "--access-log/--no-access-log",
    env="access_log",
    default=False,
    help="Log every request on the public port (costs throughput).",
)
@adsp_http_options
def serve(**options: Any) -> None:  # fmt: skip
    """Serve MODEL_URI on the public port and keep it on the version the registry names."""
    from .logs import setup_logging
    from .sidecar import serve as run_sidecar

    apply_adsp_http_options(options)
    require_token_off_loopback(options["admin_host"], options["admin_token"])
    if options["auto_rollback"] and options["linger"] <= 0:
        raise click.UsageError(
            "--auto-rollback judges a new version while the previous one lingers: set "
            "--linger to the seconds to judge it for (e.g. --linger 300)."
        )
    worker_env = dict(os.environ)
    if options["tracking_uri"]:
        worker_env["MLFLOW_TRACKING_URI"] = options["tracking_uri"]
        os.environ["MLFLOW_TRACKING_URI"] = options["tracking_uri"]
    for name, value in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    config = Config(**options, worker_env=worker_env)
    setup_logging(config.log_format, config.log_level, config.access_log)
    sys.exit(run_with_uvloop(run_sidecar(config)))


def run_with_uvloop(main_coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows has none
        return asyncio.run(main_coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_coro)


@main.command()
@click.option(
    "--duration",
    default=30.0,
    type=click.FloatRange(min=10),
    show_default=True,
    help="Seconds of traffic.",
)
@click.option(
    "--concurrency",
    default=4,
    type=click.IntRange(1),
    show_default=True,
    help="Concurrent clients.",
)
def demo(duration: float, concurrency: int) -> None:  # fmt: skip
    """Run an embedded registry and swap two model versions under load (needs scikit-learn)."""
    from .demo import run_demo

    sys.exit(run_demo(duration, concurrency))


# Clients of a running sidecar's admin port (proxy/operator.py).
for _command in (status, reload, rollback, resume):
    main.add_command(_command)


if __name__ == "__main__":
    main()
