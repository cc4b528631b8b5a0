"""Ask the MLflow registry which version a URI means right now."""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Protocol

from mlflow.exceptions import MlflowException

from ..model.uri import ModelRef, Selector

log = logging.getLogger(__name__)

# The sidecar's own registry client must answer quickly: a poll that hangs in MLflow's default
# retry loop (7 retries with backoff, minutes in all) delays every later poll. Workers keep
# MLflow's defaults for their artifact downloads.
CLIENT_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class RegistryError(Exception):
    """The registry did not give a version. `kind` says why, for status and metrics:

    - `unavailable`: no connection (refused, reset, DNS); `timeout`: no answer in time;
      `server_error`: answered 5xx (or 408/429) until MLflow's retries ran out. All transient.
    - `not_found`: the model, alias, stage or version does not exist; `denied`: 401/403;
      `bad_request`: the registry rejects the question. Permanent until somebody changes the
      registry or the credentials."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def permanent(self) -> bool:
        """True when asking again will not help until somebody changes the registry."""
        return self.kind in {"not_found", "denied", "bad_request"}


class Resolver(Protocol):
    """Turns the served URI into a version label. Blocking: call it from a thread."""

    def resolve(self) -> str: ...


_KIND_OF_CODE = {
    "RESOURCE_DOES_NOT_EXIST": "not_found",
    "PERMISSION_DENIED": "denied",
    "UNAUTHENTICATED": "denied",
    "CUSTOMER_UNAUTHORIZED": "denied",
    "INVALID_PARAMETER_VALUE": "bad_request",
}

# Credentials may sit in the tracking URI (http://user:pass@host) and so in MLflow's messages.
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def redact(text: str) -> str:
    """`text` without credentials: it goes to the log and to /status."""
    text = _URL_USERINFO.sub("***@", text)
    for name in _SECRET_VARIABLES:
        secret = os.environ.get(name, "")
        if len(secret) >= 4:  # a shorter one would blank out ordinary words, and is no secret
            text = text.replace(secret, "***")
    return text


def classify(error: BaseException) -> RegistryError:
    if isinstance(error, RegistryError):
        return RegistryError(error.kind, redact(str(error)))
    kind, message = _kind_and_message(error)
    return RegistryError(kind, redact(message))


def _kind_and_message(error: BaseException) -> tuple[str, str]:
    if isinstance(error, MlflowException):
        text = error.message.splitlines()[0] if error.message else repr(error)
        kind = _KIND_OF_CODE.get(error.error_code)
        # MLflow's store reports a missing alias as INVALID_PARAMETER_VALUE ("Registered model
        # alias live not found."): it is gone, not a malformed question.
        if kind == "bad_request" and re.search(r"\bnot found\b", text, re.IGNORECASE):
            kind = "not_found"
        if kind is not None:
            return kind, text
        # Transport failures arrive as a generic MlflowException wrapping what requests raised;
        # the wrapped exception says whether the server was silent, refused, or answered 5xx.
        transport = _transport_kind(error)
        if transport is not None:
            return transport, text
        if re.search(r"\b(401|403)\b", text):
            return "denied", text
        return "unavailable", text
    return _transport_kind(error) or "unavailable", f"{type(error).__name__}: {error}"


def _transport_kind(error: BaseException) -> str | None:
    import requests
    from urllib3.exceptions import MaxRetryError, NewConnectionError, ResponseError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # requests reports a read timeout that exhausted the retries as a ConnectionError around
        # urllib3's MaxRetryError: look at the reason inside, not only at the outer type.
        reasons: list[object] = [current, *current.args]
        for candidate in list(reasons):
            if isinstance(candidate, MaxRetryError):
                reasons.append(candidate.reason)
        for candidate in reasons:
            # urllib3 derives "connection refused" from its connect-timeout class: test it first.
            if isinstance(candidate, NewConnectionError):
                return "unavailable"
            if isinstance(candidate, requests.Timeout | Urllib3Timeout | TimeoutError):
                return "timeout"
            if isinstance(candidate, requests.exceptions.RetryError | ResponseError):
                return "server_error"
        for candidate in reasons:
            if isinstance(candidate, requests.ConnectionError | ConnectionError):
                return "unavailable"
        current = current.__cause__ or current.__context__
    return None


class _NoRetryWarnings(logging.Filter):
    """urllib3 warns about every retried attempt of every lookup while the registry is down or
    slow; the watcher reports failed lookups itself, once per state change. (In the sidecar's
    process only the registry client uses urllib3: workers are separate processes.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Retrying ("))


def _quiet_urllib3_retries() -> None:
    pool_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _NoRetryWarnings) for f in pool_log.filters):
        pool_log.addFilter(_NoRetryWarnings())


class RegistryResolver:
    """Resolves a tracked URI (alias, stage, latest) to a version number, as a string."""

    def __init__(self, ref: ModelRef, tracking_uri: str | None) -> None:
        if not ref.tracked or ref.name is None:
            raise ValueError(f"{ref.uri} is not a tracked registry URI")
        from mlflow import MlflowClient

        _quiet_urllib3_retries()
        self._ref = ref
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._warned_stage = False

    def resolve(self) -> str:
        ref = self._ref
        assert ref.name is not None
        try:
            if ref.selector is Selector.ALIAS:
                assert ref.selector_value is not None  # an alias URI names its alias
                found = self._client.get_model_version_by_alias(ref.name, ref.selector_value)
                # The client returns an int for `version` on some stores: compare as strings.
                return str(found.version)
            return self._latest(
                ref.name, ref.selector_value if ref.selector is Selector.STAGE else None
            )
        except Exception as error:
            raise classify(error) from error

    def _latest(self, name: str, stage: str | None) -> str:
        if stage is not None and not self._warned_stage:
            self._warned_stage = True
            log.warning(
                "Model stages are deprecated in MLflow; consider an alias (models:/%s@<alias>). "
                "Tracking stage '%s' as asked.",
                name,
                stage,
            )
        # Same query MLflow makes when it resolves models:/name/<stage> or models:/name/latest.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = self._client.get_latest_versions(name, None if stage is None else [stage])
        if not found:
            where = f" in stage '{stage}'" if stage else ""
            raise RegistryError("not_found", f"Registered model '{name}' has no version{where}.")
        return str(max(int(v.version) for v in found))


class FixedResolver:
    """A fixed URI's label: its registry version when it names one, else the MLmodel's uuid."""

    def __init__(self, ref: ModelRef) -> None:
        self._ref = ref

    def resolve(self) -> str:
        if self._ref.version is not None:
            return self._ref.version
        from mlflow.models import Model

        try:
            model = Model.load(self._ref.uri)
        except Exception as error:
            raise classify(error) from error
        return model.model_uuid or model.run_id or "fixed"
