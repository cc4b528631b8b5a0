"""The swap state machine: what the rest of the sidecar may use of it.

It knows workers only through the `Worker` protocol (worker.py) and imports no HTTP client and
no process module: workers are made by the factory it is given, requests reach them through the
proxy's own pools."""

from .canary import CanaryPolicy
from .compare import Limits, Verdict
from .inflight import InFlight
from .observer import NoObserver, Observers, SwapObserver
from .policy import SwapPolicy
from .record import Result, Step, SwapRecord, WorkerFailed
from .roles import SLOTS, Role, Roles
from .shadow import ShadowPolicy
from .supervisor import NoRollback, Supervisor
from .trial import Trials
from .worker import Worker, WorkerFactory

__all__ = [
    "SLOTS",
    "CanaryPolicy",
    "InFlight",
    "Limits",
    "NoObserver",
    "NoRollback",
    "Observers",
    "Result",
    "Role",
    "Roles",
    "ShadowPolicy",
    "Step",
    "Supervisor",
    "SwapObserver",
    "SwapPolicy",
    "SwapRecord",
    "Trials",
    "Verdict",
    "Worker",
    "WorkerFactory",
    "WorkerFailed",
]
