"""experiments/benchmarks/gradients.py --quick: finite numbers, checkpointing is exact."""

import json
import math

from .scripts import load_script


def _load_script():
    return load_script("experiments/benchmarks/gradients.py")


def test_quick_run_writes_finite_numbers_and_exact_checkpointing(tmp_path):
    record = _load_script().main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gradients.json").read_text())
    assert saved == json.loads(json.dumps(record))
    for kind, row in saved["cycled_etkf_loss"].items():
        for mode in ("plain", "checkpoint"):
            timing = row[mode]
            assert timing["forward_seconds"] > 0 and timing["gradient_seconds"] > 0, kind
            assert math.isfinite(timing["ratio"]) and math.isfinite(timing["value"]), kind
            assert math.isfinite(timing["gradient_forcing"]), kind
        # Rematerialisation changes nothing but the order of the gradient's final sums.
        assert row["checkpoint_value_bitwise_equal"], kind
        assert row["checkpoint_gradient_max_rel_diff"] < 1e-12, kind
    fourdvar = saved["fourdvar_window"]
    assert fourdvar is None or (
        fourdvar["forward_seconds"] > 0 and math.isfinite(fourdvar["ratio"])
    )
    small, large = saved["settings"]["memory_cycles"]
    rows = {row["cycles"]: row for row in saved["memory"]}
    assert set(rows) == {small, large}
    for row in rows.values():
        assert row["temp_bytes"] > 0 and row["total_bytes"] >= row["temp_bytes"]
    # Checkpointed memory grows far slower than the cycle count (10× here).
    ratio = saved["memory_ratio_large_over_small"]["checkpoint_total_bytes"]
    assert math.isfinite(ratio) and ratio < 3
