"""Every machine keeps its own timed results: two machines into one store, and two stores merged."""

from __future__ import annotations

import shutil

import pytest
from helpers import TINY_SWEEP

from runners.reporting.tables import flat_results
from runners.results import machine, store
from runners.sweeping.plan import TIMED_PROBES
from runners.sweeping.run import finish, run_sweep

OTHER = {"kind": "cpu", "cpu_model": "Other CPU", "microarch": "zen9", "isa": ["AVX2"]}
ONE_LENGTH = [o for o in TINY_SWEEP if not o.startswith("sweep.seq_lens")] + [
    "sweep.seq_lens=[32]",
    "sweep.timing={rounds:1,max_rounds:1}",
    "attention=full",
]


@pytest.fixture
def sweep_into(compose_config):
    """``sweep_into(store, other_machine)``: the tiny sweep into ``store``, on this machine or on another."""

    def run(results_dir, *, other_machine: bool, monkeypatch) -> list[dict]:
        with monkeypatch.context() as patched:
            if other_machine:
                patched.setattr(machine, "machine_identity", lambda accelerator: OTHER)
            run_sweep(compose_config("config", *ONE_LENGTH, f"results_dir={results_dir}", "report_dir=null"))
        return store.read_records(results_dir)

    return run


def test_cpu_identity_names_the_microarchitecture_and_isa():
    identity = machine.cpu_identity()
    assert identity["microarch"] and identity["microarch"] != "unknown"
    assert set(identity["isa"]) <= set(machine.ISA_FLAGS.values())
    label = machine.machine_label(identity)
    assert identity["microarch"] in label and identity["cpu_model"] in label


@pytest.mark.parametrize(
    ("vendor", "family", "model", "expected"),
    [
        ("AuthenticAMD", 0x19, 0x11, "zen4"),  # EPYC 9004 (Genoa), as this project's VMs report it
        ("AuthenticAMD", 0x19, 0x01, "zen3"),  # EPYC 7003 (Milan)
        ("AuthenticAMD", 0x1A, 0x02, "zen5"),  # EPYC 9005 (Turin)
        ("GenuineIntel", 0x06, 0x6A, "icelake"),
        ("GenuineIntel", 0x06, 0x8F, "sapphirerapids"),
        ("GenuineIntel", 0x06, 0x01, None),  # a model the table does not know: archspec's generic name stays
        ("HygonGenuine", 0x18, 0x01, None),
    ],
)
def test_family_and_model_name_the_microarchitecture_a_vm_hides_from_archspec(vendor, family, model, expected):
    assert machine.family_microarchitecture(vendor, family, model) == expected


def test_a_generic_archspec_level_is_refined_from_family_and_model(monkeypatch):
    """A Zen 4 guest without ``pku`` reads as x86_64_v4 in archspec; its family and model say zen4."""
    import archspec.cpu

    monkeypatch.setattr(archspec.cpu, "host", lambda: archspec.cpu.TARGETS["x86_64_v4"])
    fields = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17"}
    monkeypatch.setattr(machine, "cpuinfo_fields", lambda: fields)
    machine.cpu_microarchitecture.cache_clear()
    try:
        assert machine.cpu_microarchitecture() == "zen4"
        monkeypatch.setattr(machine, "cpuinfo_fields", lambda: {"vendor_id": "AuthenticAMD", "cpu family": "99"})
        machine.cpu_microarchitecture.cache_clear()
        assert machine.cpu_microarchitecture() == "x86_64_v4"  # no model line: the generic level, not a guess
    finally:
        machine.cpu_microarchitecture.cache_clear()


def test_two_machines_into_one_store_each_measure_their_own_timed_points(tmp_path, sweep_into, monkeypatch):
    shared = tmp_path / "shared"
    first = sweep_into(shared, other_machine=False, monkeypatch=monkeypatch)
    assert sorted(r["probe"] for r in first) == ["accuracy", "speed"]
    both = sweep_into(shared, other_machine=True, monkeypatch=monkeypatch)
    speed = [r for r in both if r["probe"] == "speed"]
    assert len(speed) == 2 and len({r["key"] for r in speed}) == 2  # measured again, not "in the store"
    assert {r["config"]["machine"]["microarch"] for r in speed} == {machine.cpu_microarchitecture(), "zen9"}
    assert [r["probe"] for r in both].count("accuracy") == 1  # a property of the config: reused, not retrained
    assert all(r["config"].get("machine") is None for r in both if r["probe"] not in TIMED_PROBES)
    again = sweep_into(shared, other_machine=True, monkeypatch=monkeypatch)  # a rerun on a machine resumes
    assert len(again) == len(both)
    frame = flat_results(again)
    fingerprints = set(frame[frame.probe == "speed"].fingerprint)
    assert len(fingerprints) == 2 and any("Other CPU (zen9; AVX2)" in f for f in fingerprints)
    finish(shared, str(tmp_path / "report"), baselines=["full"])
    report = (tmp_path / "report" / "report.md").read_text()
    for fingerprint in fingerprints:  # each machine its own section and its own answer
        assert f"## {fingerprint}" in report and f"### On {fingerprint}" in report
    assert "on 2 hardware fingerprint(s)" in report


def test_two_stores_merged_keep_both_machines_numbers(tmp_path, sweep_into, monkeypatch):
    here = sweep_into(tmp_path / "a", other_machine=False, monkeypatch=monkeypatch)
    there = sweep_into(tmp_path / "b", other_machine=True, monkeypatch=monkeypatch)
    merged = tmp_path / "merged" / "points"
    merged.mkdir(parents=True)
    for folder in ("a", "b"):
        for path in (tmp_path / folder / "points").glob("*.json"):
            shutil.copy(path, merged / path.name)
    frame = flat_results(store.read_records(tmp_path / "merged"))
    speed = frame[frame.probe == "speed"]
    assert len(speed) == 2 and speed.fingerprint.nunique() == 2  # neither machine's record dropped
    assert len(frame[frame.probe == "accuracy"]) == 1  # the same config trained twice counts once
    assert len(here) == len(there) == 2
