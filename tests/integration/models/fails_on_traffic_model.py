"""A pyfunc that passes its warm-up (an all-zero row) but answers 500 to real traffic, as a
version with a bug only live inputs reach would."""

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from mlflow.pyfunc import PythonModel


class FailsOnTraffic(PythonModel):
    def predict(self, context, model_input, params=None):
        if (model_input.to_numpy() != 0).any():
            raise MlflowException("this version breaks on live inputs", error_code=INTERNAL_ERROR)
        return [0] * len(model_input)


mlflow.models.set_model(FailsOnTraffic())
