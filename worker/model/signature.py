"""Would callers of the serving version break on the new one? Compare the MLmodel input schemas.

Callers send what the active version's signature asks for. A new version breaks them when it
needs an input they do not send (a new required column), no longer reads one it required and
they may rely on (a removed required column), or reads one as a type their values do not
convert to (a retyped column). Adding an optional column breaks nobody. Type changes that
MLflow's own schema enforcement converts losslessly (integer to a wider integer or to a float,
float to double) are not breaking either.
"""

from __future__ import annotations

from typing import Any

# MLflow converts a value of the key type to any of these when it enforces the schema.
_SAFE_WIDENING = {
    "integer": {"long", "float", "double"},
    "long": {"double"},
    "float": {"double"},
}


def _type_name(spec: Any) -> str:
    kind = getattr(spec, "type", None)
    name = getattr(kind, "name", None)
    if isinstance(name, str):
        return name
    to_dict = getattr(kind, "to_dict", None)
    return repr(to_dict() if callable(to_dict) else kind)


def _required(spec: Any) -> bool:
    return bool(getattr(spec, "required", True))


def _compatible(old_type: str, new_type: str) -> bool:
    return old_type == new_type or new_type in _SAFE_WIDENING.get(old_type, set())


def breaking_changes(old: Any | None, new: Any | None) -> list[str]:
    """What in `new` (an `mlflow.types.Schema` of inputs, or None) breaks callers of `old`.
    Empty when nothing does, or when either side has no signature (no contract to break)."""
    if old is None or new is None:
        return []
    if old.is_tensor_spec() != new.is_tensor_spec():
        kinds = ("tensors" if s.is_tensor_spec() else "columns" for s in (old, new))
        return ["inputs changed from {} to {}".format(*kinds)]
    if old.is_tensor_spec():
        if old.to_dict() != new.to_dict():
            return [f"tensor inputs changed: {old.to_dict()} -> {new.to_dict()}"]
        return []
    if not (old.has_input_names() and new.has_input_names()):
        old_types = [_type_name(s) for s in old.inputs]
        new_types = [_type_name(s) for s in new.inputs]
        if len(old_types) != len(new_types) or not all(
            _compatible(a, b) for a, b in zip(old_types, new_types, strict=True)
        ):
            return [f"unnamed inputs changed: {old_types} -> {new_types}"]
        return []

    old_specs = {s.name: s for s in old.inputs}
    new_specs = {s.name: s for s in new.inputs}
    problems = []
    for name, spec in old_specs.items():
        after = new_specs.get(name)
        if after is None:
            if _required(spec):
                problems.append(f"required input {name!r} was removed")
            continue
        before_type, after_type = _type_name(spec), _type_name(after)
        if not _compatible(before_type, after_type):
            problems.append(f"input {name!r} changed type {before_type} -> {after_type}")
    for name, spec in new_specs.items():
        if name not in old_specs and _required(spec):
            problems.append(f"new required input {name!r} that callers do not send")
    return problems
