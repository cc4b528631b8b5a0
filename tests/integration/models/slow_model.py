"""A pyfunc (MLflow "models from code") that sleeps as long as its input asks: for drain tests."""

import time

import mlflow
from mlflow.pyfunc import PythonModel


class SlowModel(PythonModel):
    def predict(self, context, model_input, params=None):
        seconds = float(model_input["sleep"].iloc[0])
        time.sleep(seconds)
        return [seconds] * len(model_input)


mlflow.models.set_model(SlowModel())
