"""What a swap needs from a version's MLmodel file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelCard:
    serving_example: str | None  # the JSON body MLflow saved to exercise /invocations
    inputs: Any | None  # the signature's input `mlflow.types.Schema`
    loader_module: str | None = None  # the flavor pyfunc loads it with (mlflow.sklearn)


def read_model_card(model_uri: str) -> ModelCard:
    """Blocking (it may download two small files): run it in a thread."""
    from mlflow.models import Model
    from mlflow.models.utils import load_serving_example

    model = Model.load(model_uri)
    inputs = model.signature.inputs if model.signature is not None else None
    loader = (model.flavors.get("python_function") or {}).get("loader_module")
    info = model.saved_input_example_info or {}
    if not info.get("serving_input_path"):
        return ModelCard(None, inputs, loader)
    return ModelCard(str(load_serving_example(model_uri)), inputs, loader)
