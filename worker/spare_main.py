"""The program a pre-warmed spare runs: `python -m mlflow_bluegreen.worker.spare_main [MODULE ...]`.

It imports what MLflow's scoring server needs (and MODULEs, the flavors of the version serving
now), says so on stdout, and waits. Told on stdin which model to serve (one JSON line: the
environment and uvicorn's arguments), it becomes exactly the server `mlflow models serve`
starts: uvicorn's own command line on MLflow's scoring app, with the model path in its
environment. Only the model load is left to wait for. An empty stdin (the sidecar went away,
or the spare is not wanted) ends it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys

READY = "mlflow-bluegreen spare ready"
NICE = 10  # while it only waits, it yields the CPU to the workers that serve


def main() -> None:
    os.nice(NICE)
    import mlflow
    import mlflow.pyfunc.scoring_server
    import uvicorn.main

    for module in sys.argv[1:]:
        # A flavor this environment lacks: the model's load will say so.
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    print(f"{READY} {json.dumps({'mlflow': mlflow.__version__})}", flush=True)
    line = sys.stdin.readline()
    if not line:
        return
    order = json.loads(line)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, order.get("priority", 0))
    except PermissionError:
        print("spare: could not leave its low CPU priority (not root)", flush=True)
    os.environ.clear()
    os.environ.update(order["env"])
    sys.argv = ["uvicorn", *order["args"]]
    uvicorn.main.main()  # as `uvicorn ...` runs: click reads UVICORN_* from the environment


if __name__ == "__main__":
    main()
