"""The job registry and the run parameters: one registry filled at app ready, one schema per kind shared by the
service start functions, the site's forms, the management commands and the API (issues #15 item 3, #20 item 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis.jobs import job_kind, job_kinds, longest_time_limit
from analysis.models import Run
from analysis.params import Param, ParamSchema, ParamsError
from analysis.services.runs import RunInputError, run_start

ROOT = Path(__file__).resolve().parent.parent
ALL_KINDS = {
    "selfcheck",
    "probe_world",
    "import_broden",
    "import_pascal_part",
    "train_demo_network",
    "extract",
    "extract_shard",
    "render_grids",
    "dissect",
    "dissect_shard",
    "dissect_rotation",
    "net2vec",
    "score_parts",
    "ablate",
    "explanatory_graph",
}
LAYER_RUN = {"network": "w-net", "dataset": "w-data", "layer": "conv5"}
#: What each kind needs besides the value under test (the API test world's network, dataset and layer).
REQUIRED = {
    "dissect": LAYER_RUN,
    "dissect_rotation": LAYER_RUN,
    "net2vec": LAYER_RUN,
    "score_parts": LAYER_RUN,
    "ablate": LAYER_RUN,
    "explanatory_graph": {"network": "w-net", "dataset": "w-data", "layers": ["conv5"]},
    "extract": {"network": "w-net", "dataset": "w-data", "layers": ["conv5"]},
    "render_grids": {"extraction_run": 1, "layer": "conv5"},
    "selfcheck": {},
    "probe_world": {},
    "train_demo_network": {},
    "import_broden": {"path": "/data/broden", "name": "broden"},
    "import_pascal_part": {"path": "/data/pascal", "name": "pascal"},
    "dissect_shard": {"dissection": 1, "shard": 0, "start": 0, "stop": 10},
    "extract_shard": {"extraction_run": 1, "shard": 0, "start": 0, "stop": 10, "compute": ["conv5"]},
}
#: Per kind, one bad value of each class (wrong type, out of range, not a choice, a string for a list, unknown key,
#: a rule across parameters): the parameter that must be named, and the value. Every one passed some interface before.
BAD = [
    ("explanatory_graph", "eval_split", 5),
    ("explanatory_graph", "landmarks", "head"),
    ("explanatory_graph", "tau", 0),
    ("explanatory_graph", "fit_top_sigma", "yes"),
    ("explanatory_graph", "quantile", 1.5),
    ("explanatory_graph", "nodes_per_filter", [10, 20]),
    ("explanatory_graph", "learn_split", "everything"),
    ("explanatory_graph", "iterations", 2.5),
    ("explanatory_graph", "inputs", "crops"),
    ("explanatory_graph", "graphs", "all"),
    ("dissect", "shards", 0),
    ("dissect", "upsample", "nearest"),
    ("dissect", "strict_threshold", "false"),
    ("dissect", "quantile", "0.99"),
    ("dissect", "iou_threshold", 1.0),
    ("dissect", "top_k", 10**400),
    ("dissect_rotation", "alphas", [0.5, 2]),
    ("dissect_rotation", "seeds", "0"),
    ("dissect_rotation", "seeds", list(range(20))),  # 20 seeds × 6 nonzero alphas > 64 rotations
    ("net2vec", "top_f", "8"),
    ("net2vec", "momentum", 1),
    ("net2vec", "classification", 0),
    ("net2vec", "concepts", -1),
    ("net2vec", "mask_rule", "nearest"),
    ("score_parts", "context", 0.4),
    ("score_parts", "inputs", "crops"),
    ("score_parts", "regression", 1),
    ("score_parts", "population", 1),
    ("ablate", "score", "probability"),
    ("ablate", "sigma_factor", -1.0),
    ("ablate", "blackout", "no"),
    ("extract", "layers", "conv5"),
    ("extract", "layers", []),
    ("extract", "k_overall", 0),
    ("extract", "quantile", 10**400),
    ("selfcheck", "matmul_size", 1),
    ("selfcheck", "repeats", "many"),
    ("selfcheck", "conv_batch", True),
    ("probe_world", "name", "no spaces"),
    ("probe_world", "size", 31),
    ("probe_world", "seed", -1),
    ("train_demo_network", "epochs", 0),
    ("train_demo_network", "name", "x\x00y"),
    ("train_demo_network", "lr", 0),
    ("render_grids", "extraction_run", "1"),
    ("import_broden", "name", ""),
    ("import_pascal_part", "images", 3),
    ("dissect_shard", "stop", 0),
    ("extract_shard", "compute", []),
    ("extract", "shards", 0),
]
for kind in ALL_KINDS:
    BAD.append((kind, "no_such_parameter", 1))


def _kind_params(kind: str, name: str, value) -> dict:
    return {**REQUIRED[kind], name: value}


def test_the_registry_is_filled_when_django_is_set_up_and_jobs_imports_nothing_of_the_project():
    code = (
        "import analysis.jobs as jobs\nassert jobs.job_kinds() == [], 'filled before setup'\n"
        "import django\ndjango.setup()\nprint(sorted(kind.name for kind in jobs.job_kinds()))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "unitscope.settings.test"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert set(eval(done.stdout.strip().splitlines()[-1])) == ALL_KINDS
    source = (ROOT / "analysis" / "jobs.py").read_text()
    assert "import services" not in source and "from analysis.services" not in source and "from . import" not in source


def test_every_kind_declares_its_schema_exporter_and_description():
    kinds = {kind.name: kind for kind in job_kinds()}
    assert set(kinds) == ALL_KINDS
    for kind in kinds.values():
        assert isinstance(kind.params, ParamSchema) and kind.description and kind.label
        assert kind.exporter is None or callable(kind.exporter)
        # each kind's defaults pass its own schema (lists in their canonical order), and the result is canonical
        validated, expected = kind.params.validate(REQUIRED[kind.name]), {**REQUIRED[kind.name], **kind.params.defaults}
        assert validated.keys() == expected.keys() and kind.params.validate(validated) == validated
        assert all(
            sorted(value) == sorted(expected[key]) if isinstance(value, list) else value == expected[key]
            for key, value in validated.items()
        ), kind.name
        assert kind.soft_time_limit < kind.time_limit
    exporting = {name for name, kind in kinds.items() if kind.exporter is not None}
    assert exporting == {
        "extract",
        "dissect",
        "dissect_rotation",
        "net2vec",
        "score_parts",
        "ablate",
        "explanatory_graph",
    }


def test_defaults_are_unchanged():
    from analysis.services.datasets import PROBE_WORLD_DEFAULTS
    from analysis.services.dissection import DISSECTION_DEFAULTS, ROTATION_DEFAULTS
    from analysis.services.explanatory_graph import GRAPH_DEFAULTS, graph_params
    from analysis.services.extraction import EXTRACTION_DEFAULTS
    from analysis.services.net2vec import NET2VEC_DEFAULTS
    from analysis.services.networks import DEMO_TRAINING_DEFAULTS
    from analysis.services.parts import ABLATION_DEFAULTS, PART_DEFAULTS, RCNN_CONTEXT
    from analysis.services.selfcheck import SELFCHECK_DEFAULTS

    assert DISSECTION_DEFAULTS == {
        "shards": 1,
        "upsample": "anchored",
        "baseline": "none",
        "shuffle_seed": 0,
        "quantile": 0.995,
        "iou_threshold": 0.04,
        "strict_threshold": False,
        "count_saturated": False,
        "batch_size": 64,
        "top_k": 5,
    }
    assert ROTATION_DEFAULTS == {
        "alphas": [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0],
        "seeds": [0],
        "full_rotation_repeats": 10,  # ND'18 §3.2 repeats the complete rotation 10 times
        "upsample": "anchored",
        "quantile": 0.995,
        "iou_threshold": 0.04,
        "strict_threshold": False,
        "count_saturated": False,
        "batch_size": 64,
    }
    assert GRAPH_DEFAULTS == {
        "nodes_per_filter": None,
        "neighbours": 15,
        "tau": 0.1,
        "iterations": 20,
        "beta": 1.0,
        "init_sigma": 0.1,
        "min_sigma": None,
        "fit_top_sigma": False,
        "neighbour_penalty": True,
        "seed": 0,
        "inputs": "object_crops",
        "context": RCNN_CONTEXT,
        "graphs": "per_category",
        "category": "",
        "batch_size": 16,
        "learn_split": "train",
        "max_learn_images": 0,
        "quantile": 0.995,
        "landmarks": [],
        "eval_split": "val",
        "top_patterns": 500,
        "top_images": 20,
        "instability": "aaai",
    }
    assert graph_params(network="n", dataset="d", layers=["a"], landmarks=["torso", "head"])["landmarks"] == [
        "head",
        "torso",
    ]
    assert PART_DEFAULTS == {
        "inputs": "object_crops",
        "split": "train",
        "context": RCNN_CONTEXT,
        "iou_threshold": 0.4,
        "nms_overlap": "suppressed_area",
        "nms_threshold": 0.5,
        "regression": True,
        "intercept": True,
        "min_part_size": 15.0,
        "min_instances": 11,
        "population": 200,
        "generations": 100,
        "crossover": 0.7,
        "mutation": 0.3,
        "init_probability": 0.02,
        "seed": 0,
        "ap_criterion": 0.3,
        "recall_criterion": 0.5,
        "max_views": 0,
        "batch_size": 64,
    }
    assert ABLATION_DEFAULTS == {
        "inputs": "object_crops",
        "split": "train",
        "context": RCNN_CONTEXT,
        "score": "softmax",
        "sigma_factor": 2.0,
        "max_images": 0,
        "seed": 0,
        "blackout": True,
        "batch_size": 32,
    }
    assert NET2VEC_DEFAULTS == {
        "concepts": 0,
        "mask_rule": "net2vec",
        "epochs": 30,
        "lr": 1.0,
        "momentum": 0.9,
        "batch_images": 64,
        "pixels_per_image": 128,
        "max_train_pixels": 32768,
        "top_f": [1, 2, 4, 8, 16],
        "min_images": 5,
        "seed": 0,
        "upsample": "plain",
        "quantile": 0.995,
        "strict_threshold": True,
        "batch_size": 16,
        "classification": True,
        "classification_concepts": 0,
        "classification_epochs": 30,
        "classification_lr": 0.1,
        "classification_batch_images": 64,
        "classification_top_f": [1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 80, 100, 128],
        "standardize": True,
    }
    assert EXTRACTION_DEFAULTS == {
        "quantile": 0.995,
        "k_overall": 15,
        "k_per_class": 10,
        "batch_size": 64,
        "decile_seed": 0,
        "shards": 1,
    }
    assert SELFCHECK_DEFAULTS == {"matmul_size": 512, "conv_batch": 16, "conv_image_size": 112, "repeats": 10}
    assert PROBE_WORLD_DEFAULTS == {"name": "probe-world", "n_images": 3000, "seed": 0, "size": 112}
    assert DEMO_TRAINING_DEFAULTS == {
        "dataset": "probe-world",
        "name": "demo-net",
        "epochs": 8,
        "seed": 0,
        "lr": 1e-3,
        "batch_size": 64,
    }
    DISSECTION_DEFAULTS["alphas"] = "changed"  # a copy: the schema's defaults stay
    assert "alphas" not in job_kind("dissect").params.defaults


@pytest.mark.parametrize("kind,name,value", BAD, ids=[f"{k}-{n}-{v!r}"[:60] for k, n, v in BAD])
def test_a_bad_value_is_refused_by_the_start_function_naming_the_parameter(kind, name, value, db):
    runs = Run.objects.count()
    with pytest.raises(RunInputError) as refused:
        run_start(kind=kind, params=_kind_params(kind, name, value))
    assert name in refused.value.errors and name in str(refused.value), refused.value.errors
    assert Run.objects.count() == runs


def test_the_examples_of_the_issue_are_refused_by_the_kind_s_own_start_function(db):
    from analysis.services.explanatory_graph import graph_run_start

    for bad in ({"eval_split": 5}, {"landmarks": "head"}):
        with pytest.raises(ParamsError) as refused:
            graph_run_start(network="w-net", dataset="w-data", layers=["conv5"], **bad)
        assert list(refused.value.errors) == list(bad)
    with pytest.raises(ParamsError, match="network: is required"):
        run_start(kind="dissect", params={"dataset": "d", "layer": "l"})
    assert not Run.objects.exists()


def test_the_api_refuses_each_bad_value_with_400_naming_it(researcher):
    from tests.test_expert_study import build_study_world

    build_study_world(units=2)
    runs = Run.objects.count()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=researcher).key}")
    startable = {kind.name for kind in job_kinds() if kind.api_startable}
    assert startable == ALL_KINDS - {"dissect_shard", "extract_shard", "import_broden", "import_pascal_part"}
    for kind, name, value in BAD:
        response = api.post(
            reverse("api:run-list"), {"kind": kind, "params": _kind_params(kind, name, value)}, format="json"
        )
        assert response.status_code == 400, (kind, name, response.content)
        if kind in startable:
            assert name in response.json()["params"], (kind, name, response.json())
        else:
            assert "kind" in response.json()
    assert Run.objects.count() == runs
    good = api.post(
        reverse("api:run-list"),
        {
            "kind": "explanatory_graph",
            "params": {**REQUIRED["explanatory_graph"], "eval_split": "train", "landmarks": ["head"]},
        },
        format="json",
    )
    assert good.status_code == 201 and Run.objects.get(pk=good.json()["id"]).params["eval_split"] == "train"


def test_the_api_lists_the_startable_kinds_and_their_parameters_from_the_registry(researcher, researcher_client):
    page = researcher_client.get(reverse("api:token")).content.decode()
    for kind in job_kinds():
        assert (f">{kind.name}</code>" in page) == kind.api_startable, kind.name
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=researcher).key}")
    schema = api.get(reverse("api:schema"), {"format": "json"}).json()
    start = schema["paths"]["/api/runs/"]["post"]
    for kind in job_kinds():
        listed = f"**{kind.name}**" in start["description"]
        assert listed == kind.api_startable, kind.name
    assert "eval_split: one of train, val; default 'val'" in start["description"]
    assert "shards: an integer in [1, 256]; default 1" in start["description"]
    request = schema["components"]["schemas"]["RunStartRequest"]["properties"]["kind"]
    choices = (
        schema["components"]["schemas"][request["allOf"][0]["$ref"].rsplit("/", 1)[1]]["enum"]
        if "allOf" in request
        else request["enum"]
    )
    assert set(choices) == {kind.name for kind in job_kinds() if kind.api_startable}


COMMAND_CASES = [
    (["learn_graph", "--network", "n", "--dataset", "d", "--layer", "conv5", "--eval-split", "5"], "eval"),
    (["learn_graph", "--network", "n", "--dataset", "d", "--layer", "conv5", "--tau", "0"], "tau"),
    (["learn_graph", "--network", "n", "--dataset", "d", "--layer", "conv5", "--layer", "conv5"], "layers"),
    (
        ["learn_graph", "--network", "n", "--dataset", "d", "--layer", "conv5", "--nodes", "3", "--nodes", "4"],
        "nodes_per_filter",
    ),
    (["dissect", "--network", "n", "--dataset", "d", "--layer", "l", "--shards", "0"], "shards"),
    (["dissect", "--network", "n", "--dataset", "d", "--layer", "l", "--quantile", "1"], "quantile"),
    (["dissect", "--network", "n", "--dataset", "d", "--layer", "l", "--upsample", "nearest"], "upsample"),
    (["dissect_rotation", "--network", "n", "--dataset", "d", "--layer", "l", "--alphas", "0.5,2"], "alphas"),
    (["net2vec", "--network", "n", "--dataset", "d", "--layer", "l", "--top-f", "0"], "top_f"),
    (["net2vec", "--network", "n", "--dataset", "d", "--layer", "l", "--concepts", "x"], "concepts"),
    (["score_parts", "--network", "n", "--dataset", "d", "--layer", "l", "--population", "1"], "population"),
    (["ablate", "--network", "n", "--dataset", "d", "--layer", "l", "--sigma-factor", "0"], "sigma_factor"),
    (["extract", "--network", "n", "--dataset", "d", "--layer", "l", "--quantile", "0"], "quantile"),
    (["selfcheck", "--matmul-size", "1"], "matmul_size"),
    (["generate_probe_world", "--size", "31"], "size"),
    (["generate_probe_world", "--name", "no spaces"], "name"),
    (["train_demo_network", "--epochs", "0"], "epochs"),
    (["render_grids", "--extraction-run", "0", "--layer", "l"], "extraction_run"),
    (["import_broden", str(ROOT), "--name", "x\ty"], "name"),
]


@pytest.mark.parametrize("argv,name", COMMAND_CASES, ids=[" ".join(argv[-2:]) for argv, _ in COMMAND_CASES])
def test_a_command_refuses_a_bad_value_naming_the_parameter(argv, name, db, capsys):
    with pytest.raises(CommandError) as refused:
        call_command(*argv)
    message = str(refused.value).replace("-", "_")
    assert name.replace("-", "_") in message, message
    assert not Run.objects.exists()


def test_a_start_form_shows_the_schema_s_error_at_its_field(researcher_client):
    from analysis.forms import SelfcheckForm
    from analysis.services.selfcheck import SELFCHECK_PARAMS
    from tests.test_expert_study import build_study_world

    field = SelfcheckForm().fields["matmul_size"]
    assert (field.initial, field.min_value, field.max_value) == (
        512,
        SELFCHECK_PARAMS["matmul_size"].low,
        SELFCHECK_PARAMS["matmul_size"].high,
    )
    build_study_world(units=2)
    runs = Run.objects.count()
    url = reverse("analysis:dissection_start", args=["w-net", "conv5"])
    response = researcher_client.post(
        url, {"dataset": "w-data", "upsample": "anchored", "baseline": "none", "shards": 1, "iou_threshold": 1.0}
    )  # [0, 1): the form cannot say so
    assert response.status_code == 200 and Run.objects.count() == runs
    assert "iou_threshold" in response.context["form"].errors, response.context["form"].errors
    url = reverse("analysis:rotation_start", args=["w-net", "conv5"])
    response = researcher_client.post(
        url, {"dataset": "w-data", "alphas": "0, 1.5", "seeds": "0", "upsample": "anchored"}
    )
    assert "alphas" in response.context["form"].errors and Run.objects.count() == runs


def test_a_run_with_good_parameters_stores_their_canonical_form(db):
    run, created = run_start(
        kind="dissect_rotation", params={**LAYER_RUN, "alphas": [1, 0.5, 0.5], "seeds": [3, 1], "quantile": 0.99}
    )
    assert created and run.params["alphas"] == [0.5, 1.0] and run.params["seeds"] == [1, 3]
    again, created = run_start(
        kind="dissect_rotation", params={**LAYER_RUN, "alphas": [0.5, 1.0], "seeds": [1, 3], "quantile": 0.99}
    )
    assert not created and again.pk == run.pk  # the same parameters however written: the same run


def test_the_schema_mechanism():
    schema = ParamSchema(
        {
            "n": Param(int, 3, low=1, high=5),
            "names": Param(str, ["b", "a"], many=True, unique_sorted=True),
            "x": Param(float, None, low=0, low_open=True, nullable=True),
            "must": Param(str),
        }
    )
    assert schema.validate({"must": "m"}) == {"n": 3, "names": ["a", "b"], "x": None, "must": "m"}
    assert schema.validate({"must": " m ", "n": None, "x": 2}) == {"n": 3, "names": ["a", "b"], "x": 2.0, "must": "m"}
    with pytest.raises(ParamsError) as refused:
        schema.validate({"n": 6, "names": "ab", "x": 0, "typo": 1})
    assert set(refused.value.errors) == {"n", "names", "x", "typo", "must"}
    with pytest.raises(ParamsError, match="params"):
        schema.validate(["n", 3])
    with pytest.raises(TypeError):
        Param(int, 0)  # an integer without bounds would take 10**400


def test_the_broker_redelivers_a_task_only_after_the_longest_job_could_have_run():
    """With acks_late a Redis broker hands an unacknowledged task to another worker after visibility_timeout: it
    must exceed every kind's hard time limit, or a long job would run twice."""
    assert settings.CELERY_VISIBILITY_TIMEOUT > longest_time_limit() == max(k.time_limit for k in job_kinds())
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "unitscope.settings.test",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
    }
    code = "from django.conf import settings\nprint(settings.CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'])"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == settings.CELERY_VISIBILITY_TIMEOUT
    assert settings.CELERY_TASK_ACKS_LATE
