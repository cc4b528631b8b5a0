"""The signature guard's judgement, on MLflow's own schema objects."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.types import ColSpec, Schema, TensorSpec

from mlflow_bluegreen.worker.model.signature import breaking_changes

IRIS = Schema([ColSpec("double", n) for n in ("sepal_length", "sepal_width", "petal_length")])


def columns(*specs: tuple[str, str] | tuple[str, str, bool]) -> Schema:
    return Schema([ColSpec(s[0], s[1], required=s[2] if len(s) > 2 else True) for s in specs])


def test_the_same_signature_breaks_nothing() -> None:
    assert breaking_changes(IRIS, IRIS) == []


def test_no_signature_on_either_side_breaks_nothing() -> None:
    assert breaking_changes(None, IRIS) == []
    assert breaking_changes(IRIS, None) == []


def test_an_added_optional_column_passes() -> None:
    new = Schema([*IRIS.inputs, ColSpec("string", "comment", required=False)])
    assert breaking_changes(IRIS, new) == []


def test_an_added_required_column_breaks_callers() -> None:
    new = Schema([*IRIS.inputs, ColSpec("double", "petal_width")])
    assert breaking_changes(IRIS, new) == [
        "new required input 'petal_width' that callers do not send"
    ]


def test_a_removed_required_column_breaks_callers() -> None:
    new = Schema(IRIS.inputs[:2])
    assert breaking_changes(IRIS, new) == ["required input 'petal_length' was removed"]


def test_a_removed_optional_column_passes() -> None:
    old = columns(("double", "x"), ("string", "note", False))
    assert breaking_changes(old, columns(("double", "x"))) == []


@pytest.mark.parametrize(
    ("before", "after", "breaks"),
    [
        ("double", "string", True),
        ("string", "double", True),
        ("double", "long", True),  # narrowing loses data
        ("long", "double", False),  # MLflow widens it
        ("integer", "long", False),
        ("float", "double", False),
    ],
)
def test_retyped_columns_break_unless_mlflow_widens_them(
    before: str, after: str, breaks: bool
) -> None:
    problems = breaking_changes(columns(("x", before)[::-1]), columns(("x", after)[::-1]))
    assert bool(problems) is breaks
    if breaks:
        assert problems == [f"input 'x' changed type {before} -> {after}"]


def test_every_problem_is_named() -> None:
    old = columns(("double", "a"), ("double", "b"), ("double", "c"))
    new = columns(("double", "a"), ("string", "b"), ("double", "d"))
    assert breaking_changes(old, new) == [
        "input 'b' changed type double -> string",
        "required input 'c' was removed",
        "new required input 'd' that callers do not send",
    ]


def test_columns_to_tensors_breaks() -> None:
    tensors = Schema([TensorSpec(np.dtype("float64"), (-1, 4))])
    assert breaking_changes(IRIS, tensors) == ["inputs changed from columns to tensors"]


def test_tensor_shape_change_breaks() -> None:
    old = Schema([TensorSpec(np.dtype("float64"), (-1, 4))])
    new = Schema([TensorSpec(np.dtype("float64"), (-1, 5))])
    assert len(breaking_changes(old, new)) == 1
    assert breaking_changes(old, old) == []


def test_unnamed_columns_compare_by_position() -> None:
    old = Schema([ColSpec("double"), ColSpec("double")])
    assert breaking_changes(old, Schema([ColSpec("double"), ColSpec("double")])) == []
    assert breaking_changes(old, Schema([ColSpec("double")])) != []
