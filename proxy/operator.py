"""`mlflow-bluegreen status | reload | rollback | resume`: steer a running sidecar from a shell,
the way `kubectl rollout status/undo` steers a Deployment, through its admin port.

This module is only an HTTP client of the admin API (GET /status, POST /reload, /rollback,
/resume) and a printer of its answers; it imports nothing else from the package, so it can be
pointed at any sidecar, local or port-forwarded.

Exit codes, for scripts:

    0  done (status: the sidecar answered; --watch: it serves what the registry names)
    1  the sidecar answered but could not do it: nothing to roll back to (409), the registry
       lookup failed (503), the switch back timed out; --watch: the new version failed or was
       blocked
    2  usage error
    3  the admin port cannot be reached (refused, timed out, not HTTP)
    4  the admin token is missing or wrong (401)
    5  --watch: no end within --timeout
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn

import click

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"

OK, REFUSED, UNREACHABLE, UNAUTHORIZED, TIMED_OUT = 0, 1, 3, 4, 5


class AdminError(Exception):
    """The admin port could not be asked, or refused the request; `code` is the exit code."""

    def __init__(self, code: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = body


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def get(self, path: str) -> Any:
        return self._call("GET", path)[1]

    def post(self, path: str) -> tuple[int, Any]:
        return self._call("POST", path)

    def _call(self, method: str, path: str) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if self.token and method != "GET":
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url + path, method=method, headers=headers, data=b"" if method == "POST" else None
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as error:
            body = _json(error.read())
            if error.code == 401:
                raise AdminError(
                    UNAUTHORIZED,
                    f"{method} {path}: 401, the admin token is missing or wrong "
                    "(--admin-token or MLFLOW_BLUEGREEN_ADMIN_TOKEN)",
                    body,
                ) from None
            return error.code, body
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise AdminError(
                UNREACHABLE,
                f"cannot reach the sidecar's admin port at {self.url}: {reason} "
                "(is it running? is --admin-url right?)",
            ) from None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"message": raw.decode(errors="replace")[:500]}


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)
    return str(body)


# -- printing -------------------------------------------------------------------------------


def _clock(epoch: float | None) -> str:
    if not epoch:
        return "?"
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _steps(steps: dict[str, float] | None) -> str:
    return ", ".join(f"{name} {seconds:.2f}s" for name, seconds in (steps or {}).items())


def _worker(worker: dict[str, Any]) -> str:
    return (
        f"version {worker.get('version')} (slot {worker.get('slot')}, pid {worker.get('pid')}, "
        f"port {worker.get('port')}, {worker.get('in_flight', 0)} in flight)"
    )


def describe_swap(swap: dict[str, Any]) -> str:
    frm = swap.get("from") or "-"
    seconds = swap.get("seconds")
    took = f" in {seconds:.2f} s" if isinstance(seconds, int | float) else ""
    line = (
        f"{_clock(swap.get('started_at'))}  {frm} → {swap.get('to')}: {swap.get('result')}{took}"
        f" ({swap.get('cause')})"
    )
    if swap.get("steps"):
        line += f"\n      {_steps(swap['steps'])}"
    if swap.get("error"):
        line += f"\n      error at {swap.get('step')}: {swap['error']}"
    return line


def describe_status(status: dict[str, Any], history: int = 5) -> str:
    lines = []
    tracked = "tracked" if status.get("tracked") else "fixed"
    lines.append(f"model:      {status.get('model_uri')} ({tracked})")
    lines.append(f"ready:      {'yes' if status.get('ready') else 'NO'}")
    active = status.get("active")
    if active:
        lines.append(f"active:     {_worker(active)} since {_clock(active.get('since'))}")
    else:
        lines.append("active:     none")
    starting = status.get("swap_in_progress")
    if starting:
        elapsed = time.time() - starting.get("started_at", time.time())
        lines.append(
            f"starting:   {starting.get('from') or '-'} → {starting.get('to')}, "
            f"at step {starting.get('step')} ({elapsed:.1f} s so far; done: "
            f"{_steps(starting.get('steps')) or 'nothing yet'})"
        )
    lingering = status.get("lingering")
    if lingering:
        lines.append(
            f"lingering:  {_worker(lingering)} until {_clock(lingering.get('until'))} "
            "(instant rollback)"
        )
    canary = status.get("canary")
    if canary:
        lines.append(f"canary:     {_worker(canary)}, {canary.get('percent', 0):.0f} % of traffic")
    shadow = status.get("shadow")
    if shadow:
        lines.append(f"shadow:     {_worker(shadow)}, {_shadow_so_far(shadow)}")
    pinned = pinned_version(status)
    if pinned is not None:
        lines.append(
            f"pinned:     version {pinned} by a rollback; the registry is not "
            "followed until `mlflow-bluegreen resume`"
        )
    registry = status.get("registry") or {}
    if status.get("tracked"):
        line = (
            f"registry:   {registry.get('state')}, names version {registry.get('resolved_version')}"
        )
        error = registry.get("last_error")
        if error:
            line += f"; last error ({error.get('kind')}): {error.get('message')}"
        lines.append(line)
    for version, failure in (status.get("failed_versions") or {}).items():
        lines.append(f"failed:     version {version}: {_message(failure)}")
    swaps = status.get("history") or []
    if swaps:
        lines.append(f"last swaps (newest first, {min(history, len(swaps))} of {len(swaps)}):")
        lines.extend("  " + describe_swap(swap) for swap in swaps[:history])
    else:
        lines.append("last swaps: none yet")
    return "\n".join(lines)


def _shadow_so_far(shadow: dict[str, Any]) -> str:
    compared = shadow.get("compared") or 0
    agreed = shadow.get("agreed") or 0
    agreement = f"{100 * agreed / compared:.1f} %" if compared else "-"
    return (
        f"a copy of {shadow.get('percent', 0):g} % of predictions: {shadow.get('sent', 0)} sent, "
        f"{shadow.get('dropped', 0)} dropped, {agreed} of {compared} answers agree ({agreement})"
    )


def pinned_version(status: dict[str, Any]) -> str | None:
    """The version a rollback pinned, if any (`pinned` is that version, or an object naming it
    with when and what the registry said)."""
    pinned = status.get("pinned")
    if isinstance(pinned, dict):
        pinned = pinned.get("version")
    return None if pinned is None else str(pinned)


def target_version(status: dict[str, Any]) -> str | None:
    """The version the sidecar should end up serving: the pinned one, else what the registry
    names (a fixed URI: what it serves)."""
    pinned = pinned_version(status)
    if pinned is not None:
        return pinned
    resolved = (status.get("registry") or {}).get("resolved_version")
    if resolved is not None:
        return str(resolved)
    wanted = status.get("wanted_version")
    return None if wanted is None else str(wanted)


def watch_outcome(status: dict[str, Any]) -> tuple[int, str] | None:
    """(exit code, what to say) once the rollout has ended, else None."""
    if status.get("swap_in_progress"):
        return None
    target = target_version(status)
    active = (status.get("active") or {}).get("version")
    if target is not None and active is not None and str(active) == target:
        return OK, f"serving version {active}: rollout complete"
    history = status.get("history") or []
    last = history[0] if history else None
    if last and str(last.get("to")) == target and last.get("result") in ("failed", "blocked"):
        return REFUSED, f"version {target} {last['result']}: {last.get('error')}"
    failed = (status.get("failed_versions") or {}).get(str(target)) if target else None
    if failed:
        return REFUSED, f"version {target} failed: {_message(failed)}"
    return None


# -- commands -------------------------------------------------------------------------------


def _admin_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.option(
                "--admin-url",
                envvar="MLFLOW_BLUEGREEN_ADMIN_URL",
                show_envvar=True,
                default=DEFAULT_ADMIN_URL,
                show_default=True,
                help="The sidecar's admin port.",
            ),
            click.option(
                "--admin-token",
                envvar="MLFLOW_BLUEGREEN_ADMIN_TOKEN",
                show_envvar=True,
                default=None,
                help="Bearer token for POST requests, if the sidecar has one.",
            ),
            click.option(
                "--json", "as_json", is_flag=True, help="Print the admin port's JSON answer."
            ),
            click.option(
                "--request-timeout",
                default=30.0,
                show_default=True,
                type=click.FloatRange(min=0.1),
                help="Seconds to wait for one answer.",
            ),
        ]
    ):
        command = decorator(command)
    return command


def _fail(error: AdminError, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"error": str(error), "body": error.body}))
    click.echo(f"mlflow-bluegreen: {error}", err=True)
    sys.exit(error.code)


def _client(admin_url: str, admin_token: str | None, request_timeout: float) -> AdminClient:
    return AdminClient(admin_url, admin_token or None, request_timeout)


@click.command()
@_admin_options
@click.option("--watch", "-w", is_flag=True, help="Follow the rollout until it ends.")
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="--watch poll.",
)
@click.option(
    "--timeout",
    default=900.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="--watch: give up (exit 5) after this many seconds.",
)
@click.option(
    "--history", default=5, show_default=True, type=click.IntRange(0), help="Swaps shown."
)
def status(
    *,
    admin_url: str,
    admin_token: str | None,
    as_json: bool,
    request_timeout: float,
    watch: bool,
    interval: float,
    timeout: float,
    history: int,
) -> None:
    """What the sidecar serves, what is starting, the last swaps and their steps. With --watch,
    follow until it serves the version the registry names (exit 0) or that version fails or is
    blocked (exit 1)."""
    client = _client(admin_url, admin_token, request_timeout)
    try:
        current = client.get("/status")
        if not watch:
            click.echo(
                json.dumps(current, indent=2) if as_json else describe_status(current, history)
            )
            return
        sys.exit(
            _watch(
                client,
                current,
                as_json=as_json,
                interval=interval,
                timeout=timeout,
            )
        )
    except AdminError as error:
        _fail(error, as_json)


def _watch(
    client: AdminClient,
    current: dict[str, Any],
    *,
    as_json: bool,
    interval: float,
    timeout: float,
) -> int:
    deadline = time.monotonic() + timeout
    said = None
    while True:
        swap = current.get("swap_in_progress")
        line = (
            f"{swap.get('from') or '-'} → {swap.get('to')}: {swap.get('step')} "
            f"(done: {_steps(swap.get('steps')) or 'nothing yet'})"
            if swap
            else f"serving {(current.get('active') or {}).get('version')}, "
            f"registry names {target_version(current)}"
        )
        if line != said and not as_json:
            click.echo(line)
            said = line
        outcome = watch_outcome(current)
        if outcome is not None:
            code, message = outcome
            if as_json:
                click.echo(json.dumps({"result": "ok" if code == OK else "failed", **current}))
            else:
                last = (current.get("history") or [None])[0]
                if last:
                    click.echo("  " + describe_swap(last))
                click.echo(message)
            return code
        if time.monotonic() > deadline:
            if as_json:
                click.echo(json.dumps({"result": "timeout", **current}))
            click.echo(f"mlflow-bluegreen: no end of the rollout after {timeout:g} s", err=True)
            return TIMED_OUT
        time.sleep(interval)
        current = client.get("/status")


def _post(
    path: str,
    describe: Callable[[int, Any], str],
    *,
    admin_url: str,
    admin_token: str | None,
    as_json: bool,
    request_timeout: float,
) -> None:
    client = _client(admin_url, admin_token, request_timeout)
    try:
        code, body = client.post(path)
    except AdminError as error:
        _fail(error, as_json)
    if as_json:
        click.echo(json.dumps(body, indent=2))
    if 200 <= code < 300:
        if not as_json:
            click.echo(describe(code, body))
        return
    click.echo(f"mlflow-bluegreen: POST {path}: {code}, {describe(code, body)}", err=True)
    sys.exit(REFUSED)


@click.command()
@_admin_options
def reload(**options: Any) -> None:
    """Ask the registry now instead of at the next poll (and retry failed versions now)."""

    def describe(code: int, body: Any) -> str:
        if code != 200:
            return f"the registry lookup failed: {body.get('error') if body else body}"
        wanted, active = body.get("version"), body.get("active_version")
        if wanted is not None and str(wanted) == str(active):
            return f"the registry names version {wanted}, which is active: nothing to do"
        return (
            f"the registry names version {wanted} (active: {active}): a swap starts; "
            "`mlflow-bluegreen status --watch` follows it"
        )

    _post("/reload", describe, **options)


@click.command()
@_admin_options
def rollback(**options: Any) -> None:
    """Switch back to the lingering version now (needs --linger) and stay on it."""

    def describe(code: int, body: Any) -> str:
        if code == 409:
            return f"nothing to roll back to: {_message(body)}"
        if code != 200:
            return _message(body)
        return (
            f"rolled back: serving version {body.get('active_version')}, pinned; "
            "`mlflow-bluegreen resume` follows the registry again"
        )

    _post("/rollback", describe, **options)


@click.command()
@_admin_options
def resume(**options: Any) -> None:
    """Follow the registry again after a rollback."""

    def describe(code: int, body: Any) -> str:
        if code != 200:
            return _message(body)
        if not body.get("resumed"):
            return "not pinned: already following the registry"
        return f"following the registry again: it names version {body.get('wanted_version')}"

    _post("/resume", describe, **options)


COMMANDS = (status, reload, rollback, resume)
