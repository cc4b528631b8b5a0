"""What a model URI asks for: a registry selector to track, or one fixed model to serve once."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from enum import Enum


class Selector(Enum):
    ALIAS = "alias"
    STAGE = "stage"
    LATEST = "latest"


class BadModelUri(ValueError):
    """The URI cannot be served; the message says what form was expected."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model URI.

    `selector` is set for the URIs the registry can move under us (alias, stage, latest): those are
    *tracked*. Everything else is *fixed*: `version` is set for `models:/name/7`, and a local path,
    `runs:/`, `models:/m-<id>` or a cloud URI carries neither.
    """

    uri: str
    name: str | None = None
    selector: Selector | None = None
    selector_value: str | None = None
    version: str | None = None

    @property
    def tracked(self) -> bool:
        return self.selector is not None

    def launch_uri(self, version: str) -> str:
        """The URI a worker is started on: always a pinned version for registry models, so a
        registry change while the worker starts cannot make it load something else."""
        if self.tracked:
            return f"models:/{self.name}/{version}"
        return self.uri

    def describe(self) -> str:
        if self.selector is Selector.ALIAS:
            return f"alias '{self.selector_value}' of registered model '{self.name}'"
        if self.selector is Selector.STAGE:
            return (
                f"latest version in stage '{self.selector_value}' of registered model '{self.name}'"
            )
        if self.selector is Selector.LATEST:
            return f"latest version of registered model '{self.name}'"
        return self.uri


def _improper(uri: str) -> BadModelUri:
    return BadModelUri(
        f"Not a proper models:/ URI: {uri!r}. Use 'models:/<name>@<alias>', "
        "'models:/<name>/<stage>', 'models:/<name>/latest', 'models:/<name>/<version>' "
        "or 'models:/<model-id>'."
    )


def parse_model_uri(uri: str) -> ModelRef:
    """Parse `uri` with the same rules MLflow applies to `models:/` URIs."""
    uri = uri.strip()
    if not uri:
        raise BadModelUri("The model URI is empty.")
    parsed = urllib.parse.urlparse(uri, allow_fragments=False)
    if parsed.scheme != "models":
        return ModelRef(uri=uri)
    path = parsed.path
    if not path.startswith("/") or len(path) <= 1:
        raise _improper(uri)
    parts = path.lstrip("/").split("/")
    if len(parts) > 2 or not parts[0].strip():
        raise _improper(uri)
    if len(parts) == 2:
        name, suffix = parts
        if not suffix.strip():
            raise _improper(uri)
        if suffix.isdigit():
            return ModelRef(uri=uri, name=name, version=suffix)
        if suffix.lower() == "latest":
            return ModelRef(uri=uri, name=name, selector=Selector.LATEST)
        return ModelRef(uri=uri, name=name, selector=Selector.STAGE, selector_value=suffix)
    if "@" in parts[0]:
        name, _, alias = parts[0].rpartition("@")
        if not name.strip() or not alias.strip():
            raise _improper(uri)
        return ModelRef(uri=uri, name=name, selector=Selector.ALIAS, selector_value=alias)
    # models:/<model-id>: a logged model, served as it is.
    return ModelRef(uri=uri)
