"""The Triton repository served by a real tritonserver: parity with in-process ONNX, batching, metrics."""

from __future__ import annotations

import ast
import concurrent.futures as cf
import dataclasses
import importlib.util
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from triton_helpers import text_inputs
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from genrec.core.artifacts import ServingAssets
from genrec.core.contract import ENSEMBLE, ITEM_STATS, RecommendParams, TokenizerParams
from genrec.model_repository.builder import RepositoryConfig, build_repository, load_configs
from genrec.server.launcher import GRPC_ADMIN_HEADER, SHM_DIR, ServerError, running_server

ROOT = Path(__file__).resolve().parents[1]


def test_python_ort_repository_layout(fp32_repository):
    configs = load_configs(fp32_repository)
    assert set(configs) == {"tokenizer", "encoder", "heads", "genrec", "recommend"}
    enc = configs["encoder"]
    assert enc.backend == "python" and enc.max_batch_size >= 350
    assert all(i.allow_ragged_batch for i in enc.input) and enc.HasField("dynamic_batching")
    assert [i.name for i in enc.input] == ["input_ids", "attention_mask"]
    ens = configs["genrec"]
    assert ens.platform == "ensemble" and [s.model_name for s in ens.ensemble_scheduling.step] == [
        "tokenizer", "encoder", "heads"]
    assert [i.name for i in ens.input] == ENSEMBLE.input_names
    assert [o.name for o in ens.output] == ENSEMBLE.output_names
    for name in ("tokenizer", "encoder", "heads", "recommend"):
        # thin entry points: a docstring and one import of project code, bound to the name Triton looks up
        tree = ast.parse((fp32_repository / name / "1" / "model.py").read_text())
        doc, imp = tree.body
        assert isinstance(doc, ast.Expr) and isinstance(imp, ast.ImportFrom), ast.dump(tree)
        assert imp.module == f"genrec.model_repository.backends.{name}" and len(imp.names) == 1
        assert imp.names[0].asname == "TritonPythonModel"
        # the class exists there and is a Triton python model (pb_utils only imports inside Triton: read the source)
        source = ast.parse(Path(importlib.util.find_spec(imp.module).origin).read_text())
        cls = next(n for n in source.body if isinstance(n, ast.ClassDef) and n.name == imp.names[0].name)
        assert {"initialize", "execute"} <= {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
    assert (fp32_repository / "genrec" / "1").is_dir()
    assert (fp32_repository / "tokenizer" / "1" / "assets" / "tokenizer.json").is_file()


def test_onnxruntime_backend_repository(artifacts, tmp_path):
    repo = build_repository(artifacts.root, tmp_path / "ort", RepositoryConfig(backend="onnxruntime", precision="fp16",
                                                                               device="cuda"))
    configs = load_configs(repo)
    for name in ("encoder", "heads"):
        cfg = configs[name]
        assert cfg.backend == "onnxruntime" and cfg.platform == "onnxruntime_onnx"
        assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert (repo / name / "1" / "model.onnx").is_file() and not (repo / name / "1" / "model.py").exists()
    # native ORT cannot merge requests of different token lengths: the tokenizer pads to max_length
    assert TokenizerParams.from_parameters(configs["tokenizer"].parameters).pad_to == 32
    assert not any(i.allow_ragged_batch for i in configs["encoder"].input)


def _assert_kept(built, served, where: str) -> None:
    """Every field the builder set is in Triton's served config with the same value (Triton adds defaults)."""
    for field, value in built.ListFields():
        got = getattr(served, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key in value:
                assert key in got, f"{where}.{field.name}[{key!r}] is not served"
                if field.message_type.fields_by_name["value"].message_type is not None:
                    _assert_kept(value[key], got[key], f"{where}.{field.name}[{key!r}]")
                else:
                    assert got[key] == value[key], f"{where}.{field.name}[{key!r}]"
        elif field.label == field.LABEL_REPEATED and field.message_type is not None:
            assert len(got) == len(value), f"{where}.{field.name}: {len(value)} built, {len(got)} served"
            for i, (b, g) in enumerate(zip(value, got)):
                _assert_kept(b, g, f"{where}.{field.name}[{i}]")
        elif field.message_type is not None:
            _assert_kept(value, got, f"{where}.{field.name}")
        else:
            assert list(got) == list(value) if field.label == field.LABEL_REPEATED else got == value, \
                f"{where}.{field.name}: built {value!r}, served {got!r}"


def test_every_config_is_served_as_built(server, fp32_repository):
    """What Triton really loaded from each config.pbtxt (its model-config API) holds every field the builder
    wrote, with the same value: a field Triton ignores, rewrites or parses differently fails here (parsing our
    own serializer's output back, the test this replaces, could not)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    configs = load_configs(fp32_repository)
    assert set(configs) == {m.name for m in client.get_model_repository_index(
        headers={GRPC_ADMIN_HEADER: server.admin_key}).models}
    for name, built in configs.items():
        served = client.get_model_config(name).config
        _assert_kept(built, served, name)
    # and what matters for serving, spelled out
    enc = client.get_model_config("encoder").config
    assert enc.dynamic_batching.max_queue_delay_microseconds == 2000 and all(i.allow_ragged_batch for i in enc.input)
    assert {i.name for i in client.get_model_config("genrec").config.input if i.optional} >= {
        "history_stats", "candidate_stats"}


def _infer(client, req, with_stats: bool = False):
    inputs = text_inputs(req["history"], req["candidates"])
    if with_stats:
        for name in ("history_stats", "candidate_stats"):
            inputs.append(grpcclient.InferInput(name, list(req[name].shape), "FP32"))
            inputs[-1].set_data_from_numpy(req[name])
    return client.infer("genrec", inputs)


@pytest.mark.parametrize("with_stats", [False, True], ids=["no-stats", "stats"])
def test_ensemble_equals_in_process_pipeline(server, pipeline, requests_corpus, with_stats):
    """Served = in-process, without item statistics (optional inputs left out: zeros, the prior) and with them;
    and the statistics really reach the scores."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    cold = {**requests_corpus[0], "history": ([], [], []), "history_stats": np.zeros((0, len(ITEM_STATS)), np.float32)}
    r1 = requests_corpus[1]
    single = {**r1, "candidates": tuple(x[:1] for x in r1["candidates"]), "candidate_stats": r1["candidate_stats"][:1]}
    for req in [*requests_corpus[:10], cold, single]:
        res = _infer(client, req, with_stats)
        (ht, hc, hs), (ct, cc, cs) = req["history"], req["candidates"]
        hst, cst = (req["history_stats"], req["candidate_stats"]) if with_stats else (None, None)
        ref = pipeline.recommend(ht, ct, hc, hs, cc, cs, history_stats=hst, candidate_stats=cst)
        for name, value in ref.items():
            got = res.as_numpy(name)
            assert got.shape == value.shape, name
            np.testing.assert_allclose(got, value, atol=1e-5, rtol=0, err_msg=name)
        assert res.as_numpy("truncated").shape == (len(ht) + len(ct),)
        if with_stats and (req["candidate_stats"].sum(1) > 0).any():
            prior = pipeline.recommend(ht, ct, hc, hs, cc, cs)["scores"]
            assert np.abs(res.as_numpy("scores") - prior).max() > 1e-3, "item statistics were ignored"


def test_optional_statistics_inputs_in_the_configs(fp32_repository):
    configs = load_configs(fp32_repository)
    for model in ("genrec", "tokenizer", "heads"):
        optional = {i.name: i.optional for i in configs[model].input if i.name.endswith("_stats")}
        assert optional == {"history_stats": True, "candidate_stats": True}, model
        assert all(list(i.dims) == [-1, len(ITEM_STATS)] for i in configs[model].input if i.name.endswith("_stats"))
    params = RecommendParams.from_parameters(configs["recommend"].parameters)
    assert params.stats_dir and params.stats_refresh_ms > 0


def test_every_config_parameter_is_a_field_of_its_typed_class(fp32_repository):
    """The builder writes each model's parameters from its contract dataclass, the backend reads the same class:
    the keys are exactly its fields, and they parse back to what was written."""
    from genrec.core import contract as c

    classes = {"genrec": c.ServedParams, "tokenizer": c.TokenizerParams, "encoder": c.EncoderParams,
               "heads": c.HeadsParams, "recommend": c.RecommendParams}
    configs = load_configs(fp32_repository)
    assert set(configs) == set(classes)
    for model, cls in classes.items():
        params = configs[model].parameters
        assert set(params) == {f.name for f in dataclasses.fields(cls)}, model
        assert cls.from_parameters(params).to_parameters() == {k: v.string_value for k, v in params.items()}, model
    ens = configs["genrec"].ensemble_scheduling.step
    assert [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in ens] == c.ensemble_wiring()


def test_dynamic_batching_merges_concurrent_requests(server, requests_corpus):
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def stats():
        s = client.get_inference_statistics("encoder").model_stats[0]
        return s.inference_count, s.execution_count, s.inference_stats.success.count

    inf0, exe0, req0 = stats()
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda r: _infer(grpcclient.InferenceServerClient(server.grpc_url), r), requests_corpus * 2))
    inf1, exe1, req1 = stats()
    requests, executions, texts = req1 - req0, exe1 - exe0, inf1 - inf0
    assert requests == 2 * len(requests_corpus)
    assert texts == 2 * sum(len(r["history"][0]) + len(r["candidates"][0]) for r in requests_corpus)   # each text once
    assert executions < requests              # and requests were really merged into shared executions


def test_metrics_endpoint(server):
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        body = r.read().decode()
    assert 'nv_inference_count{model="genrec"' in body and "nv_inference_exec_count" in body


def test_bad_request_is_invalid_argument_and_server_stays_ready(server, requests_corpus):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    req = requests_corpus[0]
    bad = {"history": req["history"], "candidates": ([], [], [])}
    with pytest.raises(InferenceServerException) as err:
        _infer(client, bad)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "candidate_text is empty" in err.value.message()
    assert client.is_server_ready() and _infer(client, req).as_numpy("scores").shape == (len(req["candidates"][0]),)


def test_broken_repository_fails_with_log_tail(fp32_repository, tmp_path):
    import shutil

    repo = tmp_path / "broken"
    shutil.copytree(fp32_repository, repo)
    (repo / "heads" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ServerError) as err:
        with running_server(repo, ready_timeout_s=60):
            pass
    assert "tritonserver" in str(err.value) and "heads" in str(err.value)


def test_stop_removes_owned_shared_memory(fp32_repository):
    with running_server(fp32_repository) as srv:
        prefix = srv.shm_prefix
        assert list(SHM_DIR.glob(f"{prefix}*"))          # the python backend really uses them
    assert not list(SHM_DIR.glob(f"{prefix}*"))


def test_deployment_manifests_parse():
    docs = []
    for path in sorted((ROOT / "server" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "InferenceService"} <= kinds
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}


K8S_VERSION = "1.30"          # the oldest Kubernetes the manifests are meant for (autoscaling/v2, policy/v1)


def test_manifests_match_the_kubernetes_schema_and_each_other():
    """Every built-in resource in server/k8s validates (strictly: an unknown or misspelt field fails) against the
    Kubernetes API schema; the scaling resources point at the Deployment and its pods (issue 15)."""
    import jsonschema
    import kubernetes_validate

    docs = {}
    for path in sorted((ROOT / "server" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
            if doc["apiVersion"].startswith("serving.kserve.io/"):
                continue                                   # a CRD: no schema in the Kubernetes API
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as err:
                where = "/".join(map(str, getattr(err, "path", ())))
                pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {err.message} at {where}")
    deploy = docs[("Deployment", "genrec")]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}

    def selects_pods(selector: dict) -> bool:
        return bool(selector) and selector.items() <= pod_labels.items()

    headless = docs[("Service", "genrec-headless")]["spec"]
    assert headless["clusterIP"] == "None" and selects_pods(headless["selector"])
    assert not headless.get("publishNotReadyAddresses", False)          # DNS lists ready pods only
    assert {(p["port"], p["targetPort"]) for p in headless["ports"]} == {(8001, "grpc")} and "grpc" in port_names
    hpa = docs[("HorizontalPodAutoscaler", "genrec")]["spec"]
    assert (hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"]) == ("Deployment", "genrec")
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count; a fixed one resets it on every apply"
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "genrec_queue_us_per_request"
    pdb = docs[("PodDisruptionBudget", "genrec")]["spec"]
    assert selects_pods(pdb["selector"]["matchLabels"])
    # a drain must be able to evict a pod at the HPA's minimum, and leave one serving
    available = hpa["minReplicas"] - pdb["maxUnavailable"] if "maxUnavailable" in pdb else pdb["minAvailable"]
    assert 1 <= available < hpa["minReplicas"], (pdb, hpa["minReplicas"])
    # the adapter rule the HPA's metric comes from (its names are checked against live Triton in test_replicas.py)
    rules = yaml.safe_load(docs[("ConfigMap", "genrec-adapter-config")]["data"]["config.yaml"])["rules"]
    assert [r["name"]["as"] for r in rules] == [metric["pods"]["metric"]["name"]]
    # connections age out, so clients balancing over the headless Service find pods added by a scale-out
    # (args go to the image's supervised `genrec serve`, which gives in-flight calls half the age again)
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    grace = deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 0 < int(args["grpc-max-connection-age-ms"]) / 2000 < grace



def test_repository_refuses_more_history_than_the_model_was_trained_on(artifacts, tmp_path):
    """The history-length feature is scaled by the trained max_history (serving.json): more is refused."""
    assert ServingAssets.load(artifacts.assets).info["max_history"] == 50
    with pytest.raises(ValueError, match="--max-history 51 exceeds the 50 history items"):
        build_repository(artifacts.root, tmp_path / "r", RepositoryConfig(precision="fp32", max_history=51))
