"""Load: QoS classes, the admission queue and open-loop arrivals (design.md section 3a).

Pure, clock-free building blocks: callers pass times in (the queue takes an injected clock);
nothing here sleeps or reads a clock.
"""

from .admission import DEFAULT_MAX_IN_SERVICE, AdmissionQueue, Admitted, workers_for
from .arrivals import poisson_arrivals, trace_arrivals
from .qos import DEFAULT_QOS, QoSClass, class_mix, load_qos, sla_compliance

__all__ = [
    "DEFAULT_MAX_IN_SERVICE",
    "workers_for",
    "DEFAULT_QOS",
    "Admitted",
    "AdmissionQueue",
    "QoSClass",
    "class_mix",
    "load_qos",
    "poisson_arrivals",
    "sla_compliance",
    "trace_arrivals",
]
