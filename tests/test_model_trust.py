"""Loading a model runs none of its code: sagan samples from (and copies for serving) only generators
it logged itself, their pyfunc file byte-identical to the installed one, the network a pt2 program
read with MLflow's pickle deserialization off. A model whose code was altered behind `@champion`, a
foreign pyfunc or a pickled model is refused before anything from it is imported or unpickled."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, run_cli, write_checkpoint

MODEL = "sagan-trust"
pytestmark = pytest.mark.e2e  # runs `sagan sample` against an MLflow store, as commands


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny generator logged by sagan into a sqlite store: (project, tracking uri, model id, folder)."""
    from pipelines.tracking.generator_model import log_generator
    from pipelines.tracking.store import connect
    from sagan_core.config import Params
    from sagan_core.model import checkpoint as ckpt_io

    project = tmp_path_factory.mktemp("trust")
    write_checkpoint(project / "checkpoint.pt", 0)
    g, meta = ckpt_io.load_generator(project / "checkpoint.pt", use_ema=True, device="cpu")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    raw = {"registry": {"model_name": MODEL}, "tracking": {"experiment": "trust", "uri": uri}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    client, _ = connect(Params.model_validate(raw))  # as `sagan train` does: MLflow's fluent URI too
    experiment = client.create_experiment("trust", artifact_location=(project / "artifacts").as_uri())
    run = client.create_run(experiment)
    model_id = log_generator(client, run.info.run_id, g, meta | {"class_names": [str(i) for i in range(10)]})
    import mlflow.artifacts

    location = client.get_logged_model(model_id).artifact_location  # its files, as a registry hands them out
    (project / "logged").mkdir()
    folder = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(project / "logged"))
    )
    return project, uri, model_id, folder


def _altered_copy(folder: Path, dst: Path, marker: Path) -> Path:
    """The logged model with a marker-writing line planted at the top of its generator_pyfunc.py."""
    shutil.copytree(folder, dst)
    code = dst / "generator_pyfunc.py"
    code.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + code.read_text())
    return dst


def _one_line_refusal(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return lines[0]


def test_altered_pyfunc_behind_champion_is_refused_without_running_it(logged, tmp_path):
    from mlflow import MlflowClient

    project, uri, model_id, folder = logged
    marker = tmp_path / "ran.txt"
    altered = _altered_copy(folder, tmp_path / "altered", marker)
    client = MlflowClient(uri, registry_uri=uri)
    bad = client.create_logged_model(client.get_logged_model(model_id).experiment_id, name="generator")
    client.log_model_artifacts(bad.model_id, str(altered))
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"models:/{bad.model_id}", model_id=bad.model_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)  # whoever can move @champion
    copy = tmp_path / "served"
    for extra in (["--out", str(tmp_path / "grid.png")], ["--verified-copy", str(copy)]):
        line = _one_line_refusal(run_cli(["sample", "--model", f"models:/{MODEL}@champion", *extra], project))
        assert "refused" in line and "generator_pyfunc.py" in line and "differs from this sagan's" in line
    assert not marker.exists() and not copy.exists() and not (tmp_path / "grid.png").exists()


def _foreign_models(folder: Path, root: Path, marker: Path) -> dict[str, Path]:
    """A foreign pyfunc (its own code file), a pickled Python model, a pickled network: each would
    write `marker` if loaded."""
    plant = f"open({str(marker)!r}, 'w').write('ran')\n"
    foreign = shutil.copytree(folder, root / "foreign")
    (foreign / "evil.py").write_text(plant + (folder / "generator_pyfunc.py").read_text())
    mlmodel = yaml.safe_load((foreign / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["model_code_path"] = "evil.py"
    (foreign / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    class Payload:
        def __reduce__(self):
            return (exec, (plant,))

    pickled = shutil.copytree(folder, root / "pickled")
    mlmodel = yaml.safe_load((pickled / "MLmodel").read_text())
    pf = mlmodel["flavors"]["python_function"]
    pf.pop("model_code_path")
    pf["loader_module"], pf["python_model"] = "mlflow.pyfunc.model", "python_model.pkl"
    (pickled / "python_model.pkl").write_bytes(pickle.dumps(Payload()))
    (pickled / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    network = shutil.copytree(folder, root / "network")
    data = network / "artifacts/generator/data"
    (data / "model.pt2").unlink()
    (data / "model.pth").write_bytes(pickle.dumps(Payload()))
    return {"foreign": foreign, "pickled": pickled, "network": network}


@pytest.mark.integration
@pytest.mark.unit
def test_foreign_or_pickled_models_are_refused_without_running_them(logged, tmp_path):
    from pipelines.registry.sampling import load_sampler, verified_copy
    from sagan_core.config import Params
    from sagan_core.errors import ConfigError

    project, uri, _, folder = logged
    marker = tmp_path / "ran.txt"
    params = Params.model_validate({"tracking": {"uri": uri}})
    reasons = {"foreign": "code file is evil.py", "pickled": "pickled model", "network": "not a pt2 program"}
    for name, model in _foreign_models(folder, tmp_path, marker).items():
        with pytest.raises(
            ConfigError, match=f"refused, not a generator this sagan logged: .*{reasons[name]}"
        ):
            load_sampler(str(model), params)
        with pytest.raises(ConfigError, match=reasons[name]):
            verified_copy(params, str(model), tmp_path / f"{name}-copy")
        assert not marker.exists() and not (tmp_path / f"{name}-copy").exists(), name


def test_sagan_processes_load_with_pickle_off_and_the_verified_copy_serves(logged, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd
    import torch

    from pipelines.registry.sampling import MODEL_FILES, load_sampler
    from sagan_core.config import Params

    project, uri, model_id, _ = logged
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
    script = (
        "import os, sys; from pipelines.cli.main import main; code = main(sys.argv[1:]); "
        "print('pickle:', os.environ.get('MLFLOW_ALLOW_PICKLE_DESERIALIZATION')); sys.exit(code)"
    )
    copy = tmp_path / "served"
    for args in (["--n", "3", "--out-dir", str(tmp_path / "each")], ["--verified-copy", str(copy)]):
        r = subprocess.run(
            [sys.executable, "-c", script, "sample", "--model", f"models:/{model_id}", *args],
            cwd=project,
            env=env | {"PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0 and "pickle: false" in r.stdout, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == [f"sample_000{i}.png" for i in range(3)]
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == sorted(MODEL_FILES)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    served = mlflow.pyfunc.load_model(str(copy))  # what `mlflow models serve -m COPY` loads
    answer = served.predict(pd.DataFrame([{"class": "3", "n": 2, "seed": 4}]))
    assert list(answer["class_id"]) == [3, 3]
    sampler = load_sampler(str(copy), Params.model_validate({"tracking": {"uri": uri}}))
    z = torch.randn(2, sampler.z_dim, generator=torch.Generator().manual_seed(4))
    inner = served.unwrap_python_model().generate(z, torch.tensor([3, 3]))
    assert np.array_equal(sampler.generate(z, torch.tensor([3, 3])).numpy(), inner.numpy())
