"""Register iris model versions in the registry at MLFLOW_TRACKING_URI, from inside the image.

Run with the image's own Python, so each version is logged with the Python, MLflow and
scikit-learn the image has: `--env-manager uv` then rebuilds the model's environment with an
interpreter the image provides (uv would otherwise download the logging machine's Python).

    python register_iris.py NAME [EXTRA_REQUIREMENT ...]

Version 1 needs only what an iris model needs; each further argument adds a version that also
requires it (a different environment to build). Prints the version numbers as a JSON list.
"""

from __future__ import annotations

import json
import sys

import mlflow
import mlflow.sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def main(name: str, extras: list[str]) -> None:
    features, target = load_iris(as_frame=True, return_X_y=True)
    mlflow.set_experiment("mlflow-bluegreen-container")
    versions = []
    for strength, extra in zip((1.0, 0.05, 0.5), [None, *extras], strict=False):
        model = LogisticRegression(C=strength, max_iter=500).fit(features, target)
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                registered_model_name=name,
                input_example=features.iloc[:3],
                extra_pip_requirements=[extra] if extra else None,
            )
        versions.append(str(info.registered_model_version))
    print(json.dumps(versions))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
