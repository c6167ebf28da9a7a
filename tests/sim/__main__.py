"""`python -m tests.sim --port P [options]`: serve the OpenAI-compatible simulator until interrupted.

Every field of `SimConfig` is a flag (`--latency-ms 500 --rpm 600 --fault-429 0.1 --log served.jsonl`),
or pass the whole config as JSON with `--config-json`. Once listening, one JSON line
`{"base_url": ..., "port": ..., "pid": ...}` is printed to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from pathlib import Path

from pydantic import ValidationError

from tests.sim.app import SimulatorApp
from tests.sim.config import SimConfig
from tests.sim.core import Simulator
from tests.sim.server import bind_socket, uvicorn_server


def _flag_type(annotation: object) -> type:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return str
    return annotation if annotation in (int, float, str, Path, bool) else str


def parse_args(argv: list[str] | None = None) -> SimConfig:
    """Build a SimConfig from command-line flags."""
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__.splitlines()[0])
    parser.add_argument("--config-json", help="a whole SimConfig as JSON (flags given as well override it)")
    parser.add_argument("--log", dest="log_path", type=Path, help="alias of --log-path")
    for name, field in SimConfig.model_fields.items():
        if name in ("log_path", "log_in_memory"):
            continue
        flag = "--" + name.replace("_", "-")
        kind = _flag_type(field.annotation)
        if name == "models":
            parser.add_argument(flag, nargs="+", help=field.description)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=field.description)
        else:
            parser.add_argument(flag, type=kind, help=field.description)
    parser.add_argument("--log-path", dest="log_path", type=Path, help=SimConfig.model_fields["log_path"].description)
    args = vars(parser.parse_args(argv))
    base = json.loads(args.pop("config_json") or "{}")
    base.update({k: v for k, v in args.items() if v is not None})
    base["log_in_memory"] = False  # nobody can read this process's memory; the log file is the record
    try:
        return SimConfig.model_validate(base)
    except ValidationError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM."""
    config = parse_args(argv)
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    simulator = Simulator(config)
    app = SimulatorApp(simulator)
    server = uvicorn_server(app)
    original_startup = server.startup

    async def startup(sockets: list | None = None) -> None:
        await original_startup(sockets)
        print(json.dumps({"base_url": f"http://{config.host}:{port}/v1", "port": port, "pid": os.getpid()}), flush=True)

    server.startup = startup  # type: ignore[method-assign]
    try:
        server.run(sockets=[sock])
    finally:
        simulator.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
