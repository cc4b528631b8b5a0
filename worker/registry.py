"""Ask the MLflow registry which version a URI means right now."""

from __future__ import annotations

import logging
import warnings
from typing import Protocol

from mlflow.exceptions import MlflowException

from .uri import ModelRef, Selector

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
    """The registry did not give a version. `kind` says why, for status and metrics."""

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
    "INVALID_PARAMETER_VALUE": "bad_request",
}


def classify(error: Exception) -> RegistryError:
    if isinstance(error, RegistryError):
        return error
    if isinstance(error, MlflowException):
        kind = _KIND_OF_CODE.get(error.error_code)
        if kind is not None:
            return RegistryError(kind, error.message)
        text = error.message
        if "401" in text or "403" in text:
            return RegistryError("denied", text.splitlines()[0])
        return RegistryError("unavailable", text.splitlines()[0] if text else repr(error))
    return RegistryError("unavailable", f"{type(error).__name__}: {error}")


class RegistryResolver:
    """Resolves a tracked URI (alias, stage, latest) to a version number, as a string."""

    def __init__(self, ref: ModelRef, tracking_uri: str | None) -> None:
        if not ref.tracked or ref.name is None:
            raise ValueError(f"{ref.uri} is not a tracked registry URI")
        from mlflow import MlflowClient

        self._ref = ref
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._warned_stage = False

    def resolve(self) -> str:
        ref = self._ref
        assert ref.name is not None
        try:
            if ref.selector is Selector.ALIAS:
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
