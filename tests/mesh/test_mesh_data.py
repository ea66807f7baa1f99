"""experiments/mesh_data.py --quick: a valid index and case files that load as meshes."""

import json

import numpy as np

from hybridda.mesh import Mesh, NodeType

from ..scripts import load_script


def _load_script():
    return load_script("experiments/mesh_data.py")


def test_quick_generation_writes_a_valid_data_set(tmp_path):
    script = _load_script()
    metrics = script.main(["--quick", "--no-progress", "--seed", "3", "--out", str(tmp_path)])
    index = json.loads((tmp_path / "index.json").read_text())
    ids = [case["id"] for case in index["cases"]]
    assert ids == list(range(6)) and metrics["cases"] == 6 and metrics["cases_per_second"] > 0
    splits = index["splits"]
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ids
    assert all(len(splits[name]) > 0 for name in ("train", "val", "test"))
    assert index["settings"]["seed"] == 3 and index["settings"]["reynolds"] == 100.0

    for case in index["cases"]:
        data = np.load(tmp_path / case["file"])
        n = case["nodes"]
        assert data["positions"].shape == (n, 2) and data["cells"].shape == (case["cells"], 3)
        assert data["velocity"].shape == (n, 2)
        assert data["pressure"].shape == data["scalar"].shape == (n,)
        assert all(np.all(np.isfinite(data[k])) for k in ("velocity", "pressure", "scalar"))
        mesh = Mesh.from_cells(data["positions"], data["cells"], data["node_type"])
        walls = np.isin(data["node_type"], [NodeType.WALL, NodeType.BUILDING])
        assert np.all(data["velocity"][walls] == 0.0)
        assert np.sum(data["node_type"] == NodeType.BUILDING) > 0
        assert len(data["buildings"]) == case["buildings"]
        assert 0.1 <= float(data["inflow_exponent"]) <= 0.4
        assert data["scalar"].max() > 1.0  # the plume (unit release rate) is there
        assert mesh.real_counts()[0] == n

    # Case i depends on the seed and i only: a one-case run reproduces case 0.
    again = tmp_path / "again"
    script.main(["--quick", "--cases", "1", "--seed", "3", "--no-progress", "--out", str(again)])
    first = np.load(tmp_path / "cases" / "case_00000.npz")
    repeated = np.load(again / "cases" / "case_00000.npz")
    for name in ("positions", "velocity", "scalar", "inflow_exponent"):
        np.testing.assert_array_equal(first[name], repeated[name])
