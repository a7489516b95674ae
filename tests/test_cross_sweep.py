"""The encoder-decoder in the sweep: cross points planned, measured, recorded and reported (issue 27, item 4)."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MAPS, TINY_SWEEP

from runners.checks import ConfigError
from runners.measure.cross_probe import cross_decode_probe, cross_speed_probe, cross_state_bytes
from runners.reporting.tables import flat_results
from runners.results import store
from runners.sweeping.estimate import estimate_seconds
from runners.sweeping.plan import attention_list, plan_points, validate
from runners.sweeping.run import run_sweep

MODEL = {"dim": 16, "layers": 1, "heads": 2}
CROSS = "sweep.cross={source_lens:[32,64],target_len:8,decode_lens:[32,128]}"
SORT = (
    "+sweep.accuracy={sort:{seq_lens:[8],num_values:4,num_train:64,num_val:16,num_test:16,batch_size:16,"
    "hparams:{linformer:{k:4}}}}"
)


@pytest.fixture
def cross_config(compose_config):
    return lambda *overrides: compose_config("config", *TINY_SWEEP, "sweep.seq_lens=[]", CROSS, *overrides)


def planned(cfg) -> list[dict]:
    attentions = attention_list(cfg)
    validate(cfg, attentions)
    return plan_points(cfg, attentions)


def test_cross_points_vary_only_the_cross_attention_and_leave_other_points_as_they_were(cross_config):
    points = planned(cross_config("attention=linformer", "attention.k=16", "sweep.baselines=[full]", SORT))
    by_probe = {probe: [p for p in points if p["probe"] == probe] for probe in {p["probe"] for p in points}}
    assert len(by_probe["cross_speed"]) == 4 and len(by_probe["cross_decode"]) == 4  # 2 variants x 2 lengths
    assert {p["target_len"] for p in by_probe["cross_speed"]} == {8}
    assert all(
        p["self_attention"] == {"name": "full"} for probe in by_probe.values() for p in probe if "cross" in str(p)
    )
    runs = {p["attention"]["name"]: p for p in by_probe["cross_accuracy"]}
    assert runs["linformer"]["attention"]["k"] == 4  # the entry's hparams, for its runs only
    assert [p["attention"]["k"] for p in by_probe["cross_speed"] if p["attention"]["name"] == "linformer"] == [16, 16]
    assert runs["full"]["task_name"] == "sort" and runs["full"]["self_attention"] == {"name": "full"}
    mqar = by_probe["accuracy"]  # a self-attention entry: no self_attention key, so its point key is unchanged
    assert mqar and all("self_attention" not in p for p in mqar)
    order = [p["probe"] for p in points]
    assert order.index("cross_accuracy") > order.index("accuracy") > order.index("cross_decode")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+sweep.cross.self_attention=linformer", "cannot decode"),
        ("+sweep.cross.source_len=[8]", "unknown key"),
        ("sweep.cross.source_lens=[0]", "positive integers"),
        ("sweep.cross.target_len=-1", "positive integers"),
    ],
)
def test_bad_cross_settings_stop_before_any_work(cross_config, override, message):
    with pytest.raises(ConfigError, match=message):
        planned(cross_config("attention=full", override))


def test_bad_entry_hparams_are_refused_naming_what_exists(cross_config):
    with pytest.raises(ConfigError, match="unknown variant 'linformr'"):
        planned(cross_config("attention=full", SORT.replace("linformer:{k:4}", "linformr:{k:4}")))
    with pytest.raises(ConfigError, match=r"hparams.linformer: give a mapping of \['k', 'share_kv'\]"):
        planned(cross_config("attention=full", SORT.replace("{k:4}", "{kk:4}")))
    with pytest.raises(ConfigError, match="k=0 is out of range"):
        planned(cross_config("attention=full", SORT.replace("{k:4}", "{k:0}")))


def test_a_cross_sweep_records_speed_state_bytes_and_seq2seq_accuracy_and_reports_them(tmp_path, cross_config):
    maps = [*TINY_MAPS, "sweep.maps=true", "sweep.maps_lens=[32]"]
    cfg = cross_config("attention=linformer", "attention.k=16", "sweep.baselines=[full,local]", SORT, *maps)
    run_sweep(cfg)
    frame = flat_results(store.read_records(tmp_path / "store"))
    cross = frame[frame.probe.str.startswith("cross_")]
    assert set(cross[cross.variant == "local"].status) == {"unsupported"}
    assert "variants that can: full" in cross[cross.variant == "local"].message.iloc[0]
    ok = cross[cross.status == "ok"]
    assert set(ok.variant) == {"full", "linformer"} and len(ok) == 2 * (2 + 2 + 1)
    decode = ok[ok.probe == "cross_decode"].set_index(["variant", "seq_len"]).cross_state_bytes
    assert decode["full", 128] == 4 * decode["full", 32]  # a KV cache of the source grows with M
    assert decode["linformer", 128] == decode["linformer", 32] < decode["full", 32]  # k=16 projected rows
    runs = ok[ok.probe == "cross_accuracy"].set_index("variant")
    assert runs.test_exact_match.between(0, 1).all() and runs.hparams["linformer"] == "k=4, share_kv=False"
    assert runs.cross_state_bytes["linformer"] < runs.cross_state_bytes["full"]
    speed = ok[ok.probe == "cross_speed"]
    assert (speed.target_len == 8).all() and (speed.train_tokens_per_s > 0).all()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Cross-attention" in report and "**Cannot cross-attend** (not scored here): `local`" in report
    assert report.index("**Cross-attention** (encoder-decoder") < report.index("## Cross-attention")
    assert "### Decoding over a source" in report and "| full | 8.0 | 32.0 |" in report  # KiB at M=32, 128 (model=tiny)
    distance = report.split("### Distance to exact cross-attention")[1].split("###")[0]
    assert "| full | " in distance and "| linformer | " in distance and "| local |" not in distance
    assert "cross_speed" not in report.split("## Cross-attention")[0]  # not in the self-attention Not scored line


def test_the_cross_decode_state_is_the_sources_keys_and_values_or_a_constant_summary():
    shape = {"model_cfg": MODEL, "self_attention": {"name": "full"}, "batch_size": 1, "device": "cpu"}
    timing = {"warmup": 1, "repeats": 3}
    full = [cross_decode_probe(**shape, **timing, attention={"name": "full"}, source_len=m) for m in (16, 48)]
    kv = 2 * 1 * 2 * 8 * 4  # keys and values x batch x heads x dim_head x fp32 bytes, per source token
    assert [r["cross_state_bytes"] for r in full] == [16 * kv, 48 * kv]
    linear = [cross_decode_probe(**shape, **timing, attention={"name": "linear"}, source_len=m) for m in (16, 48)]
    assert linear[0]["cross_state_bytes"] == linear[1]["cross_state_bytes"] < full[0]["cross_state_bytes"]
    assert cross_state_bytes(model_cfg=MODEL, attention={"name": "full"}, source_len=48) == 48 * kv


def test_the_cross_speed_probe_counts_source_and_target_tokens():
    torch.manual_seed(0)
    result = cross_speed_probe(
        model_cfg=MODEL,
        self_attention={"name": "full"},
        attention={"name": "performer", "nb_features": 8},
        source_len=32,
        target_len=8,
        batch_size=2,
        device="cpu",
        warmup=1,
        repeats=2,
    )
    assert result["train_tokens_per_s"] > 0 and result["peak_memory_mib"] >= result["state_memory_mib"] > 0
    assert result["flops_per_step"] > 0


def test_the_duration_estimate_prices_cross_points(cross_config):
    points = planned(cross_config("attention=full", "sweep.baselines=[local]", SORT))
    seconds, measured = estimate_seconds(points, device="cpu")
    assert seconds > 0 and measured >= 1
