"""``visattn bench --dispatch``: the structure of the dispatch-overhead report (never a speed bound)."""

from __future__ import annotations

import json

import pytest
import torch

from visattn.bench.dispatch import VARIANTS, dispatch_benchmark, header, markdown_table
from visattn.bench.layers import LAYER_VARIANTS, QUICK_SHAPES, p2p_pipelines
from visattn.cli import main

FAST = {"repeats": 2, "warmup": 0, "rounds": 1}


@pytest.fixture(scope="module")
def video_report():
    """Every variant on a tiny video DiT whose inputs come from its tiny pipeline, and the per-layer comparisons
    on the tiny UNet's layer shape."""
    return dispatch_benchmark(["WanTransformer3DModel"], layer_shapes=QUICK_SHAPES, **FAST)


def test_each_effect_is_compared_per_layer_with_the_same_work_without_visattn(video_report):
    layers = video_report.layers
    assert [(r.variant, r.layer) for r in layers][:3] == [(v, QUICK_SHAPES[0].name) for v in LAYER_VARIANTS[:3]]
    # one row per layer variant, the P2P generation once per tiny pipeline it is timed on
    pipelines = p2p_pipelines()
    assert len(pipelines) == 3  # SD's UNet, SD3 and Flux
    assert [r.variant for r in layers] == [*LAYER_VARIANTS[:-1], *[LAYER_VARIANTS[-1]] * len(pipelines)]
    assert [r.layer.split(" pipeline")[0] for r in layers[len(LAYER_VARIANTS) - 1 :]] == [
        f"tiny {key}" for key in pipelines
    ]
    for r in layers:
        assert r.samples == FAST["repeats"] and r.baseline
        assert 0 < r.visattn_min_us <= r.visattn_us and 0 < r.baseline_min_us <= r.baseline_us
        assert r.ratio == pytest.approx(r.visattn_us / r.baseline_us)
        assert r.ratio_min == pytest.approx(r.visattn_min_us / r.baseline_min_us)
        assert r.paired_ratio > 0
    # The comparison is fair only when both sides compute the same thing: PAG and SEG give the same layer output
    # as diffusers' PAG processor and the plain blur, AttentionMaps the same output and maps, P2P's layer the same
    # unedited rows (its edited row agrees with the edit materialized on the reference backend).
    for r in layers[:5]:
        assert r.max_abs_diff <= 1e-5, r
    for p2p_layer, variant in zip(layers[3:5], ("P2P (layer)", "P2P (joint call)"), strict=True):
        assert p2p_layer.variant == variant and p2p_layer.extra["edit_vs_materialized"] <= 1e-5
        assert p2p_layer.extra["materialized_us"] > 0 and p2p_layer.extra["materialized_paired_ratio"] > 0
    assert layers[4].max_abs_diff == 0  # the source row is the stock call's, bit for bit
    assert "PAGCFGIdentitySelfAttnProcessor2_0" in layers[0].baseline
    assert "batch-2" in layers[-1].baseline
    assert "Per layer" in video_report.markdown() and "| PAG (layer) |" in video_report.markdown()
    # The P2P generations' work, counted: the edit adds operators (the target rows' queries computed apart) and
    # instructions of visattn's own, and the note says so.
    for r in layers[len(LAYER_VARIANTS) - 1 :]:
        added, plain = r.extra["work_added"], r.extra["work_plain"]
        assert plain["aten_ops"] > 100 and sum(plain["opcodes"].values()) > 1000
        assert added["aten_ops"] > 0 and added["opcodes"]["visattn"] > 0
    assert "Python instructions, the edited one runs" in video_report.markdown()


def test_every_variant_is_timed_against_stock(video_report):
    (model,) = video_report.models
    assert model.class_name == "WanTransformer3DModel" and model.source.startswith("pipeline:")
    assert model.attention_calls > 0 and model.hooked_layers > 0 and model.batch_size > 0
    assert [v.variant for v in model.variants] == list(VARIANTS)  # a video model: every variant applies
    assert model.skipped == {}
    stock = model.variant("stock")
    assert stock.ratio == 1.0 and stock.overhead_per_call_us == 0.0
    for v in model.variants:
        assert v.samples == FAST["repeats"]
        assert 0 < v.min_us <= v.median_us
        assert v.per_call_us == pytest.approx(v.median_us / model.attention_calls)
        assert v.ratio == pytest.approx(v.median_us / stock.median_us)
        assert v.ratio_min == pytest.approx(v.min_us / stock.min_us)
        assert v.overhead_per_call_us == pytest.approx((v.median_us - stock.median_us) / model.attention_calls)
    assert "perturbed branch" in model.variant("PAG").note


def test_hooks_alone_are_measured_for_the_dispatch_only_variants(video_report):
    (model,) = video_report.models
    costs = {cost.variant: cost for cost in model.hook_costs}
    assert set(costs) == {"no effect", "closed (effect steps)"}
    stock_us = model.variant("stock").median_us
    for cost in costs.values():
        assert cost.layer_calls >= model.hooked_layers
        assert cost.denoiser_us >= 0 and cost.layer_us >= 0
        assert cost.per_forward_us == pytest.approx(cost.denoiser_us + cost.layer_us)
        assert cost.per_call_us == pytest.approx(cost.per_forward_us / model.attention_calls)
        assert cost.ratio == pytest.approx((stock_us + cost.per_forward_us) / stock_us)


def test_report_records_environment_settings_and_renders_markdown(video_report):
    env, settings = video_report.environment, video_report.settings
    assert env["packages"]["torch"] and env["packages"]["diffusers"] and env["visattn"] and env["date"]
    assert settings["threads"] == 1 and settings["repeats"] == FAST["repeats"]
    table = video_report.markdown()
    assert "| WanTransformer3DModel | " in table and "| no effect |" in table and "Hooks alone" in table
    json.dumps(video_report.as_dict())  # JSON-serializable as it is


def test_variants_that_do_not_apply_are_listed_with_a_reason():
    previous = torch.get_num_threads()
    report = dispatch_benchmark(["QwenImageTransformer2DModel"], variants=["no effect", "RadialAttention"], **FAST)
    assert torch.get_num_threads() == previous  # the run's thread count is restored
    (model,) = report.models
    assert model.source == "coverage"
    assert [v.variant for v in model.variants] == ["stock", "no effect"]
    assert "video" in model.skipped["RadialAttention"]
    assert "RadialAttention: image model" in markdown_table(report.models)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"classes": ["NoSuchModel"]}, ["classes", "NoSuchModel", "WanTransformer3DModel"]),
        ({"classes": []}, ["classes", "empty"]),
        ({"repeats": 0}, ["repeats=0", ">= 1"]),
        ({"warmup": -1}, ["warmup=-1", ">= 0"]),
        ({"rounds": 0}, ["rounds=0", ">= 1"]),
        ({"threads": 0}, ["threads=0", "positive"]),
        ({"variants": ["fast"]}, ["variants", "fast", "no effect"]),
    ],
)
def test_bad_input_is_a_value_error_naming_parameter_value_and_allowed(kwargs, words):
    arguments = {"classes": ["WanTransformer3DModel"], **FAST, **kwargs}
    with pytest.raises(ValueError) as error:
        dispatch_benchmark(**arguments)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_cli_prints_the_table_and_writes_json_and_markdown(tmp_path, capsys):
    status = main(
        ["bench", "--dispatch", "--classes", "WanTransformer3DModel", "--variants", "no effect", "PAG"]
        + ["--repeats", "2", "--warmup", "0", "--rounds", "1", "--quiet", "--out", str(tmp_path), "--name", "d"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "| WanTransformer3DModel |" in printed and "torch thread" in printed
    assert printed.split()[-2:] == [str(tmp_path / "d.json"), str(tmp_path / "d.md")]
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["command"].startswith("visattn bench")
    assert report["settings"]["threads"] == 1
    (model,) = report["models"]
    assert [v["variant"] for v in model["variants"]] == ["stock", "no effect", "PAG"]
    assert all(v["median_us"] > 0 and v["ratio"] > 0 for v in model["variants"])
    assert model["attention_calls"] > 0
    markdown = (tmp_path / "d.md").read_text()
    assert "diffusers" in markdown and "| WanTransformer3DModel | " in markdown


def test_cli_default_name_is_dispatch_and_the_date(tmp_path, capsys):
    arguments = ["bench", "--dispatch", "--classes", "QwenImageTransformer2DModel", "--variants", "no effect"]
    assert main(arguments + ["--repeats", "1", "--warmup", "0", "--quiet", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("dispatch-*.json")
    date = json.loads(written.read_text())["environment"]["date"][:10]
    assert written.name == f"dispatch-{date}.json"


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (["--dispatch", "--quick"], "--quick"),
        (["--dispatch", "--tgate"], "--tgate"),
        (["--classes", "WanTransformer3DModel"], "--dispatch"),
        (["--dispatch", "--classes", "NoSuchModel"], "NoSuchModel"),
        (["--dispatch", "--classes", "WanTransformer3DModel", "--repeats", "0"], "repeats"),
        (["--dispatch", "--classes", "WanTransformer3DModel", "--threads", "0"], "threads"),
    ],
)
def test_cli_bad_requests_are_usage_errors(tmp_path, capsys, arguments, needle):
    assert main(["bench", *arguments, "--quiet", "--out", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_run_of_per_layer_comparisons_alone_times_no_model():
    report = dispatch_benchmark(
        ["QwenImageTransformer2DModel"], variants=["PAG (layer)"], layer_shapes=QUICK_SHAPES, **FAST
    )
    assert report.models == []
    assert [r.variant for r in report.layers] == ["PAG (layer)"]
    assert report.settings["layer_repeats"] == FAST["repeats"]
    assert "| PAG (layer) |" in report.markdown()


def test_cpu_clock_times_the_same_comparisons_and_says_so():
    """``clock="cpu"`` reads the timing thread's CPU time (a shared machine's waits for a core left out)."""
    report = dispatch_benchmark(
        ["UNet2DConditionModel"], variants=["no effect", "PAG (layer)"], layer_shapes=QUICK_SHAPES, clock="cpu", **FAST
    )
    assert report.settings["clock"] == "cpu" and "CPU time" in header(report)
    assert [v.variant for v in report.models[0].variants] == ["stock", "no effect"]
    (pag,) = report.layers
    assert pag.max_abs_diff == 0 and 0 < pag.visattn_min_us <= pag.visattn_us
    with pytest.raises(ValueError, match="clock='gpu'"):
        dispatch_benchmark(["UNet2DConditionModel"], clock="gpu", **FAST)
