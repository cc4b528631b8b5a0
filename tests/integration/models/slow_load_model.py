"""A pyfunc that takes minutes to load, as a huge model would: for the startup timeout."""

import time

import mlflow
from mlflow.pyfunc import PythonModel


class SlowLoadModel(PythonModel):
    def load_context(self, context):
        time.sleep(600)

    def predict(self, context, model_input, params=None):
        return [0] * len(model_input)


mlflow.models.set_model(SlowLoadModel())
