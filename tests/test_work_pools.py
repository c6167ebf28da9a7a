"""Two machines through Prefect work pools (issue 18), on one host: a real `prefect server`, the CPU pool `vistune`
served by worker `machine-a`, the GPU pool `vistune-gpu` by worker `machine-b`.

Each "machine" has its own folder with its own copy of the code (its checkout: the deployments of each role are
deployed from it, so their runs work in it), its own PREFECT_HOME, and sees one `shared` folder (the shared mount:
export, tiny base models, training config, checkpoints). `pipeline` with `train_on="deployment"` generates and
curates on A and hands training to B; the Prefect API says which worker ran which run, and the checkpoint loads.
A path only A sees fails training on B in seconds, naming it. `evaluate` with `infer_on="deployment"` judges on A
and hands the answers to `evaluate-infer` on B. With B stopped, the pipeline fails with "no worker" after
`start_timeout_s`. One server and two workers for the module (~3 min here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.prefect_server import start_server, stop

REPO = Path(__file__).resolve().parents[1]
CODE = ("flows", "tasks", "schemas", "training", "prefect.yaml")  # what a machine's checkout needs to run flows
START_TIMEOUT_S = 8.0

pytestmark = [pytest.mark.prefect_server, pytest.mark.timeout(600)]


@dataclass
class Machine:
    name: str  # the worker's name
    pool: str
    folder: Path
    checkout: Path
    env: dict[str, str]
    worker: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / "worker.log"


@dataclass
class Cluster:
    env: dict[str, str]  # the test process's view of the server
    shared: Path
    a: Machine
    b: Machine
    vision: Path
    llm: Path


def machine(root: Path, name: str, pool: str, server_env: dict[str, str]) -> Machine:
    folder = root / name
    checkout = folder / "vistune"
    for part in CODE:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, checkout / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, checkout / part)
    env = {**server_env, "PYTHONPATH": str(checkout), "PREFECT_HOME": str(folder / "prefect-home"),
           "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick runs up within a second (default 10 s)
           "VISTUNE_DB": str(folder / "local.duckdb")}  # machine-local; the pipeline names its own
    return Machine(name=name, pool=pool, folder=folder, checkout=checkout, env=env)


def deploy(m: Machine, *names: str) -> None:
    """`python -m flows.pools deploy --name ...` from the machine's checkout: the pull step is its folder."""
    args = [a for n in names for a in ("--name", n)]
    done = subprocess.run([sys.executable, "-m", "flows.pools", "deploy", *args], env=m.env, cwd=m.checkout,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"deploy {names} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def start_worker(m: Machine) -> None:
    with m.log.open("ab") as out:
        m.worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", m.pool,
                                     "--name", m.name, "--limit", "1"], env=m.env, cwd=m.folder, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_workers(env: dict[str, str], machines: tuple[Machine, ...], timeout_s: float = 90) -> None:
    """Until the server has heard from each machine's worker (a worker takes a few seconds to start)."""
    deadline = time.monotonic() + timeout_s
    with api(env), client() as c:
        while time.monotonic() < deadline:
            if all(any(w.name == m.name for w in c.read_workers_for_work_pool(m.pool)) for m in machines):
                return
            time.sleep(0.5)
    pytest.fail("workers not seen by the server:\n" + "\n".join(m.log.read_text()[-2000:] for m in machines))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from training.tiny import build_tiny_base_models

    root = tmp_path_factory.mktemp("two-machines")
    server, env = start_server(root, ui=False)
    a = machine(root, "machine-a", "vistune", env)
    b = machine(root, "machine-b", "vistune-gpu", env)
    try:
        deploy(a, "pipeline", "evaluate")  # the CPU role's deployments, deployed from A's checkout
        deploy(b, "train", "evaluate-infer")  # the GPU role's, from B's
        start_worker(a)
        start_worker(b)
        wait_for_workers(env, (a, b))
        shared = root / "shared"
        vision, llm = build_tiny_base_models(shared / "base")
        yield Cluster(env=env, shared=shared, a=a, b=b, vision=vision, llm=llm)
    finally:
        for m in (a, b):
            if m.worker is not None:
                stop(m.worker)
        stop(server)


def client() -> Any:
    """A sync Prefect client (inside `api(env)`: on the test's server)."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def api(env: dict[str, str]) -> Any:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_UI_URL: env["PREFECT_UI_URL"]})


def run_and_wait(cluster: Cluster, deployment: str, parameters: dict[str, Any], timeout_s: float) -> Any:
    """Start a deployment's run (not as anyone's subflow) and return the flow run once it is final."""
    from prefect.deployments import run_deployment

    with api(cluster.env):
        created = run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False)
        with client() as c:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                run = c.read_flow_run(created.id)
                if run.state is not None and run.state.is_final():
                    return run
                time.sleep(1)
    logs = "\n".join(f"--- {m.name}\n{m.log.read_text()[-3000:]}" for m in (cluster.a, cluster.b))
    pytest.fail(f"{deployment} run {created.id} not final after {timeout_s} s:\n{logs}")


def pipeline_parameters(cluster: Cluster, coco: Path, base_url: str, **pipeline: Any) -> dict[str, Any]:
    """Generate and curate on A (its database local to A), export and train on the shared folder."""
    from training.tiny import write_tiny_config

    shared = cluster.shared
    stage = {"max_steps": 2, "batch_size": 2, "per_device_batch_size": 2}
    config = write_tiny_config(
        shared / "train.yaml", cluster.vision, cluster.llm, image_root=coco, output_dir=shared / "runs",
        data={"preflight_images": "header", "preflight_workers": 1},
        stage1={**stage, "data": str(shared / "export" / "llava_pretrain.json")},
        stage2={**stage, "data": str(shared / "export" / "llava_instruct.json")})
    return {"params": {
        "ingest": {"coco_dir": str(coco), "db_path": str(cluster.a.folder / "vistune.duckdb")},
        "generate": {"limit_images": 2, "model": "gpt-4o-mini", "base_url": base_url, "shard_size": 8, "rpm": 6000},
        "curate": {"export_dir": str(shared / "export")},
        "train": {"config": str(config), "allow_cpu": True, "stage2_overrides": pipeline.pop("stage2_overrides", [])},
        "train_on": "deployment", **pipeline,
    }}


def family(cluster: Cluster, parent_id: Any) -> dict[str, Any]:
    """flow name -> flow run, of the direct children of `parent_id`."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with api(cluster.env), client() as c:
        children = c.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
        names = {f.id: f.name for f in c.read_flows()}
    return {names[r.flow_id]: r for r in children}


def messages(cluster: Cluster, flow_run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with api(cluster.env), client() as c:
        return [log.message for log in c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]


def test_pipeline_curates_on_machine_a_and_trains_on_machine_b(cluster: Cluster, sample_coco: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    from tests.sim import SimConfig, start_simulator

    with start_simulator(SimConfig()) as sim:
        run = run_and_wait(cluster, "pipeline/pipeline", pipeline_parameters(cluster, sample_coco, sim.base_url),
                           timeout_s=420)
    worker_logs = "\n".join(f"--- {m.name}\n{m.log.read_text()[-4000:]}" for m in (cluster.a, cluster.b))
    assert run.state.name == "Completed", f"{run.state.message}\n{worker_logs}"

    # Which worker ran which run, from the API: the pipeline and its in-process subflows on A, train on B.
    assert run.labels["prefect.worker.name"] == "machine-a" and run.work_pool_name == "vistune"
    children = family(cluster, run.id)
    assert set(children) == {"ingest", "generate", "curate", "train"}, children
    for name in ("ingest", "generate", "curate"):  # subflows: no worker of their own, they ran in A's process
        assert children[name].work_pool_name is None and children[name].infrastructure_pid is None
        assert children[name].state.name == "Completed"
    train = children["train"]
    assert train.labels["prefect.worker.name"] == "machine-b" and train.work_pool_name == "vistune-gpu"
    assert train.infrastructure_pid != run.infrastructure_pid  # two processes, started by two workers
    # ... in B's folder, on the CPU because allow_cpu is set where the deployment requires a GPU
    logged = "\n".join(messages(cluster, train.id))
    assert f":{cluster.b.checkout}: device cpu" in logged and "GPU required; allow_cpu set" in logged, logged

    # The checkpoint is on the shared folder, written on B; A recorded what it was trained on beside it.
    checkpoint = cluster.shared / "runs" / "stage2" / "final"
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint)
    assert model.config.text_config.num_hidden_layers == 2
    trained = json.loads((checkpoint.parent / "trained.json").read_text())
    assert trained["checkpoint"] == str(checkpoint)
    # The pipeline's summary says where the checkpoint is and links the train run it handed off.
    with api(cluster.env), client() as c:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

        summary = c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=["pipeline-summary"])))
    text = summary[-1].data
    assert f"checkpoint `{checkpoint}`; trained by train/train run [{train.name}](" in text, text
    assert f"/runs/flow-run/{train.id})" in text and "worker `machine-b` of pool `vistune-gpu`" in text


def test_evaluate_judges_on_machine_a_and_answers_on_machine_b(cluster: Cluster, sample_coco: Path) -> None:
    import torch

    from tasks import store
    from tasks.ingest.coco import ingest
    from tests.sim import SimConfig, start_simulator
    from training.config import load_config
    from training.model import build_base_model
    from training.tiny import write_tiny_config

    shared = cluster.shared
    torch.manual_seed(0)  # a random tiny checkpoint on the shared folder: inference, not training, is tested here
    model, processor = build_base_model(load_config(write_tiny_config(shared / "eval.yaml", cluster.vision,
                                                                      cluster.llm)))
    checkpoint = shared / "eval-ckpt"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    db = shared / "eval.duckdb"  # on the shared folder: B writes the answers, A judges them
    ingest(sample_coco, "train2017", db)
    with start_simulator(SimConfig(judge_scoring="fixed", judge_score_1=8, judge_score_2=4)) as sim:
        run = run_and_wait(cluster, "evaluate/evaluate", {"params": {
            "name": "pools", "db_path": str(db), "split": "train2017", "per_category": 1, "model": "gpt-4o-mini",
            "base_url": sim.base_url, "judge_model": "judge-llm", "checkpoints": [f"tiny={checkpoint}"],
            "max_new_tokens": 8, "infer_on": "deployment", "allow_cpu": True, "start_timeout_s": 60}},
            timeout_s=300)
    worker_logs = "\n".join(f"--- {m.name}\n{m.log.read_text()[-4000:]}" for m in (cluster.a, cluster.b))
    assert run.state.name == "Completed", f"{run.state.message}\n{worker_logs}"
    assert run.labels["prefect.worker.name"] == "machine-a" and run.work_pool_name == "vistune"
    infer = family(cluster, run.id)["evaluate-infer"]
    assert infer.labels["prefect.worker.name"] == "machine-b" and infer.work_pool_name == "vistune-gpu"
    logged = "\n".join(messages(cluster, infer.id))
    assert "inference on " in logged and f":{cluster.b.checkout}: device cpu" in logged, logged  # in B's folder
    assert "GPU required; allow_cpu set" in logged
    answers = store.query("SELECT model_id, backend, checkpoint FROM eval_answers", path=db)
    assert len(answers) == 3 and {(r["model_id"], r["backend"]) for r in answers} == {("tiny", "transformers")}
    assert store.table_counts(db)["eval_reviews"] == 3  # judged on A
    with api(cluster.env), client() as c:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

        report = c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=["eval-report"])))
    text = report[-1].data
    assert f"evaluate-infer/evaluate-infer run [{infer.name}](" in text and f"/runs/flow-run/{infer.id})" in text
    assert "worker `machine-b` of pool `vistune-gpu`" in text, text


def test_a_path_machine_b_cannot_see_fails_training_in_seconds(cluster: Cluster, sample_coco: Path) -> None:
    from training.tiny import write_tiny_config

    # A exported into its own folder and the config (on shared storage) names it relatively: only A sees it.
    (cluster.a.checkout / "export").mkdir()
    (cluster.a.checkout / "export" / "llava_instruct.json").write_text("[]")
    output_dir = cluster.shared / "runs-a-only"
    config = write_tiny_config(cluster.shared / "a-only.yaml", cluster.vision, cluster.llm, image_root=sample_coco,
                               output_dir=output_dir, stage2={"data": "export/llava_instruct.json"})
    run = run_and_wait(cluster, "train/train", {"params": {"config": str(config), "allow_cpu": True}}, timeout_s=180)

    assert run.state.name == "Failed" and run.labels["prefect.worker.name"] == "machine-b"
    missing = cluster.b.checkout / "export" / "llava_instruct.json"
    assert f"stage2.data {missing} does not exist" in run.state.message, run.state.message
    assert (run.end_time - run.start_time).total_seconds() < 15  # no model, no training process, no torch
    assert not (output_dir / "stage1").exists()


def test_without_a_gpu_worker_the_pipeline_fails_saying_so(cluster: Cluster, sample_coco: Path) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    from tests.sim import SimConfig, start_simulator

    assert cluster.b.worker is not None
    stop(cluster.b.worker)  # the GPU machine is gone
    with start_simulator(SimConfig()) as sim:
        # another seed: the dataset is unchanged, the training parameters are not, so training is due
        parameters = pipeline_parameters(cluster, sample_coco, sim.base_url, start_timeout_s=START_TIMEOUT_S,
                                         stage2_overrides=["seed=7"])
        run = run_and_wait(cluster, "pipeline/pipeline", parameters, timeout_s=300)

    assert run.state.name == "Failed"
    assert "no worker of pool 'vistune-gpu' picked up train/train run" in run.state.message, run.state.message
    assert f"within {START_TIMEOUT_S:g} s" in run.state.message and "`machine-b`" in run.state.message
    # the train run it started never ran and was cancelled after the configured wait, not later
    with api(cluster.env), client() as c:
        runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(), deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["train"])))
        child = next(r for r in runs if r.parent_task_run_id is not None and r.state.name == "Cancelled")
        history = c.read_flow_run_states(child.id)
    waited = (history[-1].timestamp - child.created).total_seconds()
    assert START_TIMEOUT_S <= waited < START_TIMEOUT_S + 10, waited
    assert [state.type.value for state in history] == ["SCHEDULED", "CANCELLED"], history  # never taken


def test_a_missing_deployment_says_how_to_deploy(cluster: Cluster) -> None:
    from flows.handoff import HandoffFailed, run_on_pool

    with api(cluster.env), pytest.raises(HandoffFailed, match=r"deployment 'evaluate/nope' not found .* "
                                                                r"`python -m flows\.pools deploy`"):
        run_on_pool("evaluate/nope", {}, start_timeout_s=1)
