"""A pyfunc whose load fails, as a version with a missing dependency or weights would."""

import mlflow
from mlflow.pyfunc import PythonModel


class BrokenModel(PythonModel):
    def load_context(self, context):
        raise RuntimeError("this version cannot load: weights file missing")

    def predict(self, context, model_input, params=None):
        return []


mlflow.models.set_model(BrokenModel())
