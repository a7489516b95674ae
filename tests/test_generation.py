"""The decode probe in a sweep, its records (unsupported for variants that cannot decode) and the report's section."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import TINY_SWEEP

from runners.measure.decode_probe import decode_probe
from runners.reporting.crossover import cost_series, crossover
from runners.reporting.generation import growth_table
from runners.reporting.tables import flat_results
from runners.results import store
from runners.sweeping.run import run_sweep

DECODE_ONLY = ["sweep.seq_lens=[]", "~sweep.accuracy", "sweep.decode_lens=[16,64]", "sweep.decode_repeats=4"]
TINY_MODEL = {"dim": 32, "layers": 1, "heads": 2, "dim_head": None, "ff_mult": 2, "dropout": 0.0, "attn_dropout": 0.0}


def test_decode_probe_measures_steps_and_state():
    result = decode_probe(
        model_cfg=TINY_MODEL, attention={"name": "full"}, context=40, batch_size=2, device="cpu", repeats=3
    )
    assert result["decode_tokens_per_s"] > 0 and result["decode_ms"] > 0 and result["prefill_ms"] > 0
    assert result["state_bytes"] == 2 * 2 * 40 * 32 * 4 + 8  # keys and values of 40 tokens, width 32, fp32; position


def test_sweep_records_decode_points_and_the_report_shows_generation(tmp_path, compose_config):
    cfg = compose_config("config", *TINY_SWEEP, *DECODE_ONLY, "attention=linear")
    run_sweep(cfg)
    cfg = compose_config("config", *TINY_SWEEP, *DECODE_ONLY, "attention=full")
    run_sweep(cfg)
    cfg = compose_config("config", *TINY_SWEEP, *DECODE_ONLY, "attention=nystrom")
    run_sweep(cfg)
    records = store.read_records(tmp_path / "store")
    decode = {(r["variant"], r["seq_len"]): r for r in records if r["probe"] == "decode"}
    assert set(decode) == {(v, n) for v in ("linear", "full", "nystrom") for n in (16, 64)}
    assert decode["nystrom", 16]["status"] == "unsupported" and "variants that can" in decode["nystrom", 16]["message"]
    for n in (16, 64):
        assert decode["linear", n]["status"] == decode["full", n]["status"] == "ok"
    # the KV cache grows with the prompt, the linear summary does not
    assert decode["full", 64]["state_bytes"] > decode["full", 16]["state_bytes"]
    assert decode["linear", 64]["state_bytes"] == decode["linear", 16]["state_bytes"]
    growth = growth_table(flat_results(records))
    assert growth.loc["full", "state bytes ~ n^p"] == pytest.approx(1.0, abs=0.01)
    assert growth.loc["linear", "state bytes ~ n^p"] == pytest.approx(0.0, abs=1e-9)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "### Generation" in report and "| nystrom | n=16, 64 |" in report  # in the Not scored table, once
    assert (tmp_path / "report" / "decode_state_hw0.png").exists()


def test_decoding_crossover_is_where_a_variant_stays_faster():
    def cost(tokens_per_s):
        return cost_series(
            pd.DataFrame(
                {"seq_len": list(tokens_per_s), "status": "ok", "decode_tokens_per_s": list(tokens_per_s.values())}
            ),
            "decode_tokens_per_s",
            False,
        )

    full = cost({256: 100.0, 1024: 90.0, 4096: 50.0, 16384: 20.0})
    stays = crossover(cost({256: 120.0, 1024: 80.0, 4096: 60.0, 16384: 60.0}), full)
    assert stays.cell().startswith("~") and stays.lengths == (1024, 4096)  # faster at 256 alone does not count
    assert 1024 < stays.length < 4096
    falls_back = crossover(cost({256: 80.0, 1024: 80.0, 4096: 60.0, 16384: 10.0}), full)
    assert falls_back.cell().startswith("never (not up to 16,384")
