"""experiments/benchmarks/online_letkf_scale.py --quick: the augmented LETKF at two sizes."""

import json

from .scripts import load_script


def test_quick_benchmark_runs_both_filters_and_memory_grows_linearly(tmp_path):
    module = load_script("experiments/benchmarks/online_letkf_scale.py")
    record = module.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "online_letkf_scale.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert [row["n"] for row in saved["rows"]] == [40, 120]
    for row in saved["rows"]:
        local, dense = row["domains"], row["dense"]
        # Local domains hold the few observations within the taper's support.
        assert row["local_observations"] < row["observations"]
        assert dense["max_abs_difference_from_domains"] < 1e-10
        assert local["seconds_per_cycle"] > 0 and dense["seconds_per_cycle"] > 0
        assert local["analysis_rmse"] < 1.2  # observation std 1, half observed
    # XLA's buffer accounting (deterministic, unlike times): linear in n.
    assert 0.8 < saved["slopes"]["domains"]["temp_bytes"] < 1.2
    assert json.loads((tmp_path / "config.json").read_text())["quick"]
