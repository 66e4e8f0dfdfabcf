"""The benchmarks' own bookkeeping: how agreement between two exact methods is counted and reported."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from cna_utils.publish.perf_page import performance_markdown

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _importance_module():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_importance", BENCH / "importance.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_top_k_agreement_counts_cases_and_tells_ties_from_real_differences():
    agree = _importance_module().top_k_agreement
    a = torch.arange(12.0).reshape(2, 2, 3)                      # 2 cases, 6 scores each
    assert agree(a, a.clone(), k=3, tol=1e-6) == (0, True)
    far = a.clone()
    far[1, 0, 0] = 100.0                                         # case 1: neuron 0 jumps into the top-3, far from a tie
    differ, ties = agree(a, far, k=3, tol=1e-6)
    assert (differ, ties) == (1, False)


def test_top_k_agreement_accepts_a_swap_at_the_boundary_within_tolerance():
    agree = _importance_module().top_k_agreement
    a = torch.tensor([[5.0, 3.0 + 1e-7, 3.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[5.0, 3.0, 3.0 + 2e-7, 0.0]], dtype=torch.float64)  # 2nd place: neuron 1, then neuron 2
    assert agree(a, b, k=2, tol=1e-6) == (1, True)
    assert agree(a, b, k=2, tol=1e-9) == (1, False)


def _importance_entry(**extra) -> dict:
    return {"model": "m", "cases": 100, "layers": 2, "neurons": 3, "vocab": 5, "threads": 2,
            "max_abs_diff_nats": {"series_vs_lse": 1e-6}, "scored_by_definition": 0.0,
            "seconds": {k: 1.0 for k in ("series_all_layers", "lse_all_layers_projected",
                                         "per_case_all_projected", "lse_floor_all_layers")},
            "ratio_lse_over_series": 1.0, "ratio_per_case_over_series": 1.0,
            "ratio_series_over_lse_floor": 1.0, "matmul_peak_gflops": 1.0,
            "projection_share_of_series": 0.5, **extra}


def test_performance_page_states_how_many_cases_share_the_top_99(tmp_path):
    entries = {"new": _importance_entry(top99_cases_differing=3, top99_differences_are_ties=True),
               "same": _importance_entry(top99_cases_differing=0, top99_differences_are_ties=True),
               "apart": _importance_entry(top99_cases_differing=2, top99_differences_are_ties=False)}
    (tmp_path / "importance.json").write_text(json.dumps(entries))
    page = performance_markdown(tmp_path, None)
    assert "new: the same in 97 of 100 cases; the others differ only by neurons that tie" in page
    assert "same: the same in all 100 cases" in page
    assert "apart: the same in 98 of 100 cases; the others differ by neurons that do not tie" in page
    entries["new"]["top99_cases_differing"] = 1
    (tmp_path / "importance.json").write_text(json.dumps(entries))
    assert "new: the same in 99 of 100 cases; the other differs only" in performance_markdown(tmp_path, None)


def test_performance_page_reports_the_screens_recall_and_cost(tmp_path):
    screen = {"heads_exact_drop_ge_2_points": 4, "recall_ge_2_points": 0.75, "missed_ge_2_points": ["3_1"],
              "heads_exact_drop_ge_10_points": 1, "recall_ge_10_points": 1.0, "missed_ge_10_points": [],
              "largest_exact_drop_not_confirmed_points": 2.5, "largest_exact_drop_not_confirmed_head": "3_1"}
    entry = {"model": "m", "cases": 100, "heads": 270, "heads_exact": 270, "heads_confirmed": 20,
             "correlation": {"atp": {"spearman_logprob_drop": 0.9}, "atp*": {"spearman_logprob_drop": 0.8}},
             "screen": {"all cases": screen, "any operation": screen},
             "seconds": {"exact_every_head": 300.0, "atp": 10.0, "atp*": 100.0, "confirm": 20.0}}
    (tmp_path / "atp.json").write_text(json.dumps({"m": entry}))
    page = performance_markdown(tmp_path, None)
    row = next(line for line in page.splitlines() if line.startswith("| m |"))
    assert "75% of 4" in row and "100% of 1" in row and "2.5 (3_1)" in row
    assert "30x" in row and "10.0x" in row                      # exact / atp, exact / (atp + confirm)
