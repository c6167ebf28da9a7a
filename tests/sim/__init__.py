"""An OpenAI-compatible API simulator for tests and benchmarks (see docs/SIMULATOR.md).

Example: a test runs generation against it and checks nothing was paid twice.

    from tests.sim import SimConfig, answered_twice, start_simulator
    with start_simulator(SimConfig(latency_ms=50, rpm=600, fault_5xx=0.05)) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
        ...
        assert not answered_twice(sim.log)
"""

from tests.sim.config import FAULT_FIELDS, SimConfig
from tests.sim.core import ServedRequest, Simulator
from tests.sim.faults import FAULT_NAMES
from tests.sim.logcheck import answered, answered_twice
from tests.sim.server import SimHandle, SimProcess, start_simulator, start_simulator_process

__all__ = [
    "FAULT_FIELDS",
    "FAULT_NAMES",
    "ServedRequest",
    "SimConfig",
    "SimHandle",
    "SimProcess",
    "Simulator",
    "answered",
    "answered_twice",
    "start_simulator",
    "start_simulator_process",
]
