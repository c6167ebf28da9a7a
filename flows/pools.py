"""The work pools by role, and `python -m flows.pools deploy`: create them (when missing) and deploy prefect.yaml.

CPU work (ingest, generate, curate, judging) goes to the pool named by the `cpu_pool` setting
(`VISTUNE_CPU_POOL`, default `vistune`), GPU work (training, inference) to `gpu_pool` (`VISTUNE_GPU_POOL`,
default `vistune-gpu`). prefect.yaml names them `{{ $VISTUNE_CPU_POOL }}` / `{{ $VISTUNE_GPU_POOL }}`: Prefect
fills those from the environment at `prefect deploy` time and has no default for an unset variable, so a plain
`prefect deploy --all` needs both exported. This command exports them from the settings (environment, `.env`,
`vistune.toml`), creates each missing pool as a process pool, then runs `prefect deploy` (default `--all`;
other arguments, e.g. `--name train`, are passed on).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pool_environment() -> dict[str, str]:
    """The variables prefect.yaml's pool placeholders read, from the settings."""
    from schemas.settings import get_settings

    settings = get_settings()
    return {"VISTUNE_CPU_POOL": settings.cpu_pool, "VISTUNE_GPU_POOL": settings.gpu_pool}


def ensure_pools(names: Sequence[str], env: dict[str, str]) -> list[str]:
    """Create each pool of `names` the server lacks, as a process pool; returns those created."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    created = []
    with get_client(sync_client=True) as client:
        for name in dict.fromkeys(names):
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                # the CLI fills in the process worker's default job template (the client alone would not)
                subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "work-pool", "create", name,
                                "--type", "process"], env=env, check=True)
                created.append(name)
    return created


def deploy(prefect_args: Sequence[str] = ()) -> int:
    """Create the missing pools, then `prefect deploy` from the repository root with the pool variables set."""
    env = {**os.environ, **pool_environment()}
    ensure_pools([env["VISTUNE_CPU_POOL"], env["VISTUNE_GPU_POOL"]], env)
    args = list(prefect_args) or ["--all"]
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", *args], env=env,
                          cwd=REPO).returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("deploy", "env"):
        print("usage: python -m flows.pools deploy [prefect deploy arguments, default --all]\n"
              "       python -m flows.pools env    (print the pool variables as shell exports)", file=sys.stderr)
        return 2
    if argv[0] == "env":
        for key, value in pool_environment().items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    return deploy(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
