"""benchmarks/scaling.py: the table over repeated runs (median, each run, the drift column),
against numbers computed by hand."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("scaling", BENCH / "scaling.py")
scaling = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(scaling)


def run(mode: str, layout: str, repeat: int, iteration: float, first: float | None, prm: float) -> dict:
    r = {"size": "1m", "params": 791040, "prompts": 8, "layout": layout, "mode": mode, "repeat": repeat,
         "threads": "t", "s_rollout": 0.2, "s_prm": prm, "s_score": 0.05, "s_policy": 0.1, "s_sync": 0.01,
         "s_iteration": iteration, "s_rollout_engine": 0.19, "s_rollout_worker": 0.2, "engine_tok_s": 1000.0,
         "rollout_tok_s": 1600.0, "learner_tok_s": 3200.0, "peak_rss_gib": 4.0, "response_len": 40.0, "wall_s": 30.0}
    if first is not None:
        r["s_first_same_work"] = first
    return r


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def test_repeats_give_the_median_each_run_and_the_drift_of_the_same_work():
    rows = [
        run("serial", "shared", 0, 0.50, 0.60, prm=0.2), run("pipelined", "shared", 0, 0.60, 0.66, prm=0.3),
        run("serial", "shared", 1, 0.70, 0.64, prm=0.4), run("pipelined", "shared", 1, 0.54, 0.70, prm=0.1),
        run("serial", "shared", 2, 0.55, 0.62, prm=0.3), run("pipelined", "shared", 2, 0.58, 0.68, prm=0.2),
        run("serial", "split", 0, 0.80, 0.9, prm=0.3), run("pipelined", "split", 0, 0.60, 0.5, prm=0.3),
    ]
    lines = scaling.format_table(rows).splitlines()
    head = cells(lines[0])
    serial, pipelined, split_serial, split_pipelined = (dict(zip(head, cells(line))) for line in lines[2:])
    # Medians: serial 0.55 (of 0.50, 0.70, 0.55), pipelined 0.58 (of 0.60, 0.54, 0.58): 0.58 / 0.55 = 1.05.
    assert serial["iteration s"] == "0.55" and serial["each run s"] == "0.50, 0.70, 0.55"
    assert pipelined["iteration s"] == "0.58" and pipelined["pipelined / serial"] == "1.05"
    # Phases are means over the runs: PRM (0.2 + 0.4 + 0.3) / 3 = 0.30, (0.3 + 0.1 + 0.2) / 3 = 0.20.
    assert serial["PRM s"] == "0.30" and pipelined["PRM s"] == "0.20"
    # Drift: the medians of iteration 1's same work, 0.68 / 0.62 = 1.10; only where it is the same work.
    assert pipelined["iteration 1 / serial's (same work)"] == "1.10"
    assert serial["iteration 1 / serial's (same work)"] == "-"
    assert split_pipelined["iteration 1 / serial's (same work)"] == "-"  # sampled beside the updates there
    assert split_pipelined["pipelined / serial"] == "0.75" and split_serial["each run s"] == "0.80"
    assert pipelined["response tokens"] == "40.0"


def test_results_of_an_earlier_version_still_make_a_table():
    old = [run("serial", "shared", 0, 0.5, None, prm=0.2), run("pipelined", "shared", 0, 0.45, None, prm=0.2)]
    for r in old:
        del r["repeat"], r["response_len"]
    lines = scaling.format_table(old).splitlines()
    pipelined = dict(zip(cells(lines[0]), cells(lines[3])))
    assert pipelined["pipelined / serial"] == "0.90" and pipelined["iteration 1 / serial's (same work)"] == "-"
    # Response tokens from tokens/s x seconds / rows: 1600 x 0.2 / 32 = 10.0.
    assert pipelined["response tokens"] == "10.0"


def test_a_failed_run_is_counted_beside_the_ones_that_ran():
    rows = [run("serial", "shared", 0, 0.5, 0.6, prm=0.2), {"failed": "boom", "size": "1m", "prompts": 8,
                                                              "layout": "shared", "mode": "serial", "repeat": 1}]
    line = scaling.format_table(rows).splitlines()[2]
    assert dict(zip(cells(scaling.format_table(rows).splitlines()[0]), cells(line)))["each run s"] == "0.50 (1 failed)"


def test_the_plan_alternates_the_loops_within_each_repeat(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(scaling, "build_model", lambda size, work: (tmp_path / size, 1))
    monkeypatch.setattr(scaling, "run_variant", lambda *a, **k: calls.append((a[2], a[4], k["warmup"])) or {"s_iteration": 1.0})

    class Args:
        iterations, set, warmup = {"1m": 5, "25m": 3}, [], 2
    (tmp_path / "variants").mkdir()
    plan = scaling.plan_of(["1m"], [8], ["shared"], ["serial", "pipelined"], repeats=2)
    rows = scaling.run_plan(plan, Args, tmp_path, tmp_path, None, 0.0)
    # The size's iterations and the warm-up left out; the second repeat in reverse order, so a steady
    # drift falls on both loops.
    assert calls == [("serial", 5, 2), ("pipelined", 5, 2), ("pipelined", 5, 2), ("serial", 5, 2)]
    assert sorted(p.name for p in (tmp_path / "variants").iterdir()) == [
        "1m-p8-shared-pipelined-r1.json", "1m-p8-shared-pipelined.json", "1m-p8-shared-serial-r1.json", "1m-p8-shared-serial.json"]
    assert [r["repeat"] for r in rows] == [0, 0, 1, 1] and {(r["iterations"], r["warmup"]) for r in rows} == {(5, 2)}
    assert [m for *_, m, _ in scaling.plan_of(["1m"], [8], ["shared"], ["serial", "pipelined"], repeats=4)] == [
        "serial", "pipelined", "pipelined", "serial", "serial", "pipelined", "pipelined", "serial"]


def test_the_workers_and_the_raw_engine_take_turns_first():
    spec = importlib.util.spec_from_file_location("rollout_overhead", BENCH / "rollout_overhead.py")
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    order = overhead.batch_order(6)
    assert order == ["workers", "raw", "raw", "workers", "workers", "raw"]
    # Over every 4 rounds each side goes first twice: a steady drift slows both alike.
    assert overhead.batch_order(4).count("workers") == 2


def test_iterations_per_size_take_the_later_value_and_refuse_what_cannot_run():
    assert scaling.iterations_per_size(["3", "1m=12"], None) == {"1m": 12, "25m": 3, "125m": 3}
    assert scaling.iterations_per_size(["1m=12", "5"], None) == {"1m": 5, "25m": 5, "125m": 5}
    errors = []

    def error(message):
        errors.append(message)
        raise SystemExit(2)

    for bad in ("2m=4", "1m=1", "three"):
        try:
            scaling.iterations_per_size([bad], error)
        except SystemExit:
            pass
    assert len(errors) == 3 and "unknown size '2m'" in errors[0] and "at least 2" in errors[1]
    assert scaling.describe_iterations({"1m": 12, "25m": 3, "125m": 3}, ["1m", "25m"]) == "1m 12, 25m 3"
    # Two warm-up iterations left out: every run needs a third.
    assert scaling.iterations_per_size(["125m=4"], None, warmup=2) == {"1m": 3, "25m": 3, "125m": 4}
    try:
        scaling.iterations_per_size(["125m=2"], error, warmup=2)
    except SystemExit:
        pass
    assert errors[-1] == "--iterations 125m=2: need a whole number of at least 3 (the first 2 left out: --warmup)"


def test_repeats_per_size_set_the_runs_of_each_size_in_the_plan():
    repeats = scaling.repeats_per_size(["2", "1m=4"], None)
    assert repeats == {"1m": 4, "25m": 2, "125m": 2}
    plan = scaling.plan_of(["1m", "25m"], [8], ["shared"], ["serial", "pipelined"], repeats)
    assert [(s, m, r) for s, _, _, m, r in plan] == [
        ("1m", "serial", 0), ("1m", "pipelined", 0), ("1m", "pipelined", 1), ("1m", "serial", 1),
        ("1m", "serial", 2), ("1m", "pipelined", 2), ("1m", "pipelined", 3), ("1m", "serial", 3),
        ("25m", "serial", 0), ("25m", "pipelined", 0), ("25m", "pipelined", 1), ("25m", "serial", 1)]
    errors = []

    def error(message):
        errors.append(message)
        raise SystemExit(2)

    for bad in ("1m=0", "9m=2"):
        try:
            scaling.repeats_per_size([bad], error)
        except SystemExit:
            pass
    assert errors == ["--repeats 1m=0: need a whole number of at least 1",
                      "--repeats 9m=2: unknown size '9m' (sizes: 1m, 25m, 125m)"]


def test_workers_over_raw_is_the_median_of_each_rounds_ratio():
    spec = importlib.util.spec_from_file_location("rollout_overhead", BENCH / "rollout_overhead.py")
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    # The machine slows by 20 % after round 2: each round's ratio is 1.0, 0.9, 1.0, 1.0, 1.1.
    workers = [2.0, 2.0, 2.4, 2.4, 2.4]
    raw = [2.0, 1.8, 2.4, 2.4, 2.64]
    assert overhead.pair_ratio(workers, raw) == pytest.approx(1.0)
    # The machine slows by 20 % inside round 2, between its workers' batch and its raw one: the rounds
    # say 0.9, 1.08, 0.9, where the two sides' medians (2.0 and 2.16) would say 1.08.
    assert overhead.pair_ratio([2.0, 2.0, 2.4], [1.8, 2.16, 2.16]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="one raw batch per workers' batch: 2 against 1"):
        overhead.pair_ratio([1.0, 1.0], [1.0])


def test_the_table_gives_each_side_against_the_raw_engine_round_by_round():
    spec = importlib.util.spec_from_file_location("rollout_overhead", BENCH / "rollout_overhead.py")
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    workers, engines, raw = [2.0, 2.0, 2.4], [1.9, 1.9, 2.3], [1.8, 2.16, 2.16]
    row = {"size": "1m", "params": 0.8e6, "prompts": 8, "workers": 2, "threads": "1 thread each",
           "workers_s": 2.0, "engines_s": 1.9, "raw_s": 2.16, "ratio": overhead.pair_ratio(workers, raw),
           "engines_ratio": overhead.pair_ratio(engines, raw), "each_workers_s": workers, "each_raw_s": raw,
           "workers_tokens": [1280] * 3, "raw_tokens": [1280] * 3}
    cells = [c.strip() for c in overhead.format_rows([row])[2].split("|")[1:-1]]
    # Rounds: raw over engines 0.947, 1.137, 0.939 -> median 0.95 (the medians 2.16 / 1.9 would say 1.14).
    assert cells[6:8] == ["**0.90**", "0.95"]
    assert cells[8] == "2.00, 2.00, 2.40; 1.80, 2.16, 2.16"
