"""A pyfunc (MLflow "models from code") whose faults its model_config sets, for judging versions
by what clients see: `raise_above` makes it raise (MLflow answers 400) on rows whose first
column exceeds it, though its input example (all zeros) passes; `sleep` makes every prediction
that much slower. Otherwise every version answers the same: a tenth of the first column."""

import time

import mlflow
from mlflow.pyfunc import PythonModel


class Judged(PythonModel):
    def load_context(self, context):
        config = context.model_config or {}
        self.raise_above = config.get("raise_above")
        self.sleep = float(config.get("sleep", 0.0))

    def predict(self, context, model_input, params=None):
        if self.sleep:
            time.sleep(self.sleep)
        first = model_input.iloc[:, 0]
        if self.raise_above is not None and (first > self.raise_above).any():
            raise ValueError(f"this version cannot handle inputs above {self.raise_above}")
        return [round(float(value) * 0.1, 6) for value in first]


mlflow.models.set_model(Judged())
