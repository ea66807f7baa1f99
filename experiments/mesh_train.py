"""Train and compare the three mesh surrogates on the urban-canopy flow data (issue 9).

MeshGraphNet, Transolver and the anchored branched transformer (`hybridda.mesh`) learn
the map from a canopy mesh and its inflow / source parameters to the steady fields at
the nodes: velocity ``u``, ``v``, pressure ``p`` and the passive scalar ``c`` of
`experiments/mesh_data.py`. All three get the same data, the same node inputs, the same
number of Adam steps with the same batch size, learning-rate schedule and loss, so the
comparison is of the architectures:

- **Inputs** per node: the exact distance to the ground or the nearest building, the
  inflow profile ``(y / H)^α`` at the node's height, the source's Gaussian shape
  ``exp(-r² / 2w²)`` and the offset to the source ``(x - x_s, y - y_s)``; per case the
  condition ``(α, x_s, y_s)``. Every input and output field is standardised with the
  training set's mean and standard deviation, so the loss (the mean squared error of
  the standardised fields over the real nodes) weights each field by its inverse
  variance. The models also see the node positions and types (and MeshGraphNet the
  edges, scaled by the mean edge length).
- **Training**: Adam with a linear warm-up and cosine decay, gradient clipping, random
  batches of training cases (one padded size bucket), compiled chunks of steps with an
  Orbax checkpoint after each (``--resume`` continues a killed run bit for bit:
  `hybridda.checkpoint`, the driver `train_in_chunks`).
- **Evaluation**: per-field normalised MSE, ``100 Σ (pred - true)² / Σ (true - mean)²``
  over all real nodes of a set (% of the field's variance in that set), on the test
  split (building layouts never seen in training) and on two sets of *larger meshes*:
  ``longer`` (a 1.5× longer channel with up to 6 buildings) and ``finer`` (the
  training channel meshed about twice as finely). The anchored model keeps its anchor
  counts on larger meshes; the other two need nothing.
- **Speed**: the compiled prediction of one test case (jit, after compiling; anchor
  selection included) against the finite-element solve of the same case
  (`mesh_data.solve_case`: Navier–Stokes by Newton and the SUPG scalar), both timed
  here on the same CPU, best of a few repeats.

Writes ``metrics.json``, ``config.json``, figures (true vs predicted fields and error
maps on a test layout and a longer channel (``--quick``: the test layout only), training
losses) to ``--out`` and a table to stdout. The data sets are generated with
`experiments/mesh_data.py` into ``--data`` on first use and reused afterwards.

Usage::

    python experiments/mesh_train.py                 # full run (data ~10 min, then ~35 min)
    python experiments/mesh_train.py --resume        # continue a killed run
    python experiments/mesh_train.py --quick         # tiny models and data (tests)
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from hybridda import mesh as hm  # noqa: E402
from hybridda._training import digest, train_in_chunks  # noqa: E402
from hybridda.checkpoint import Checkpointer, prepare_run_directory, resume_or_init  # noqa: E402

FIELDS = ("u", "v", "p", "c")
MODELS = ("meshgraphnet", "transolver", "abswift")
LABELS = {"meshgraphnet": "MeshGraphNet", "transolver": "Transolver", "abswift": "AB transformer"}
SETS = ("test", "longer", "finer")
DTYPE = jnp.float32


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run (written to config.json; a resumed run must match)."""

    seed: int = 0
    # Data (experiments/mesh_data.py): the training channel, and the two larger sets.
    cases: int = 300
    max_area: float = 4e-3
    wall_spacing: float = 0.03
    longer_cases: int = 16
    longer_length: float = 9.0
    longer_max_buildings: int = 6
    finer_cases: int = 16
    finer_max_area: float = 2e-3
    finer_wall_spacing: float = 0.02
    # Training: the same for every model.
    steps: int = 2500
    batch_size: int = 2
    learning_rate: float = 1e-3
    warmup_steps: int = 125
    final_learning_rate: float = 1e-5
    clip_norm: float = 1.0
    chunk: int = 250
    # Models: about 0.1 M parameters and similar training cost on CPU.
    meshgraphnet: dict = dataclasses.field(
        default_factory=lambda: {"latent": 32, "steps": 6, "mlp_depth": 2}
    )
    transolver: dict = dataclasses.field(
        default_factory=lambda: {"width": 64, "layers": 4, "heads": 4, "slices": 32}
    )
    abswift: dict = dataclasses.field(
        default_factory=lambda: {
            "width": 32,
            "heads": 4,
            "geometry_anchors": 48,
            "volume_anchors": 128,
            "neighbours": 8,
            "geometry_layers": 1,
            "layers": 2,
            "branch_layers": 1,
            "decoder_layers": 1,
            "frequencies": 4,
        }
    )
    # Timing.
    timing_cases: int = 3
    timing_repeats: int = 10
    fem_repeats: int = 2


QUICK = {
    "cases": 6,
    "max_area": 2e-2,
    "wall_spacing": 0.08,
    "longer_cases": 1,
    "finer_cases": 1,
    "finer_max_area": 1.2e-2,
    "finer_wall_spacing": 0.06,
    "steps": 20,
    "batch_size": 2,
    "learning_rate": 1e-2,
    "warmup_steps": 2,
    "chunk": 10,
    "meshgraphnet": {"latent": 8, "steps": 1, "mlp_depth": 1},
    "transolver": {"width": 8, "layers": 1, "heads": 2, "slices": 4},
    "abswift": {
        "width": 8,
        "heads": 2,
        "geometry_anchors": 8,
        "volume_anchors": 16,
        "neighbours": 4,
        "geometry_layers": 0,
        "layers": 1,
        "branch_layers": 0,
        "decoder_layers": 1,
        "frequencies": 1,
    },
    "timing_cases": 1,
    "timing_repeats": 2,
    "fem_repeats": 1,
}


# ---------------------------------------------------------------------- data


@functools.cache
def mesh_data():
    """The data-generation script as a module (it sits beside this one).

    Imported by name from its folder, so that its worker processes can unpickle it.
    """
    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module("mesh_data")


def data_arguments(config: Config, which: str) -> list[str]:
    """`mesh_data.py` arguments of one data set: ``base``, ``longer`` or ``finer``."""
    seed = {"base": config.seed, "longer": config.seed + 1000, "finer": config.seed + 2000}
    arguments = ["--seed", str(seed[which])]
    if which == "base":
        arguments += ["--cases", str(config.cases), "--max-area", str(config.max_area)]
        arguments += ["--wall-spacing", str(config.wall_spacing)]
    elif which == "longer":
        arguments += ["--cases", str(config.longer_cases), "--max-area", str(config.max_area)]
        arguments += ["--wall-spacing", str(config.wall_spacing)]
        arguments += ["--length", str(config.longer_length)]
        arguments += ["--max-buildings", str(config.longer_max_buildings)]
    else:
        arguments += ["--cases", str(config.finer_cases)]
        arguments += ["--max-area", str(config.finer_max_area)]
        arguments += ["--wall-spacing", str(config.finer_wall_spacing)]
    return arguments


def ensure_data(config: Config, root: Path, workers: int) -> dict[str, dict]:
    """Generate the three data sets under `root` (once); returns their indices."""
    indices = {}
    for which in ("base", "longer", "finer"):
        directory = root / which
        arguments = data_arguments(config, which)
        if not (directory / "index.json").is_file():
            print(f"generating the {which} data set in {directory}", flush=True)
            options = ["--workers", str(workers), "--out", str(directory), "--no-progress"]
            mesh_data().main(arguments + options)
        index = json.loads((directory / "index.json").read_text())
        wanted = _generation_settings(arguments)
        stored = {k: index["settings"][k] for k in wanted}
        if stored != wanted:
            raise ValueError(
                f"{directory} holds a data set generated with {stored}, this run needs "
                f"{wanted}; delete it or pass another --data directory."
            )
        index["directory"] = str(directory)
        indices[which] = index
    return indices


def _generation_settings(arguments: list[str]) -> dict:
    """The index settings implied by mesh_data arguments (to check a reused data set)."""
    values = dict(zip(arguments[::2], arguments[1::2], strict=False))
    settings = {"seed": int(values["--seed"]), "cases": int(values["--cases"])}
    settings["max_area"] = float(values["--max-area"])
    if "--wall-spacing" in values:
        settings["wall_spacing"] = float(values["--wall-spacing"])
    if "--length" in values:
        settings["length"] = float(values["--length"])
        settings["max_buildings"] = int(values["--max-buildings"])
    return settings


@dataclasses.dataclass
class Case:
    """One case on the host (NumPy): its mesh, model inputs, targets and parameters."""

    id: int
    positions: np.ndarray  # (nodes, 2)
    node_type: np.ndarray  # (nodes,) NodeType
    cells: np.ndarray  # (cells, 3)
    senders: np.ndarray  # (edges,): both directions of every triangle side
    receivers: np.ndarray
    features: np.ndarray  # (nodes, 5)
    condition: np.ndarray  # (3,)
    targets: np.ndarray  # (nodes, 4): u, v, p, c
    exponent: float
    source: tuple[float, float]

    def counts(self) -> tuple[int, int, int]:
        """Real (nodes, edges, cells)."""
        return len(self.positions), len(self.senders), len(self.cells)


def node_features(positions, buildings, exponent, source, height, source_width) -> np.ndarray:
    """``(nodes, 5)``: wall distance, inflow profile, source shape, offset to the source."""
    x, y = positions[:, 0], positions[:, 1]
    distance = y.copy()  # the ground
    for left, width, building_height in np.asarray(buildings).reshape(-1, 3):
        dx = np.maximum(np.maximum(left - x, x - (left + width)), 0.0)
        dy = np.maximum(y - building_height, 0.0)
        distance = np.minimum(distance, np.hypot(dx, dy))
    inflow = np.clip(y / height, 0.0, None) ** exponent
    dx, dy = x - source[0], y - source[1]
    shape = np.exp(-(dx**2 + dy**2) / (2 * source_width**2))
    return np.stack([distance, inflow, shape, dx, dy], axis=1)


def load_cases(index: dict, ids) -> list[Case]:
    settings = index["settings"]
    cases = []
    for case_id in ids:
        data = np.load(Path(index["directory"]) / f"cases/case_{case_id:05d}.npz")
        exponent = float(data["inflow_exponent"])
        source = tuple(float(s) for s in data["source"])
        positions = np.asarray(data["positions"], float)
        features = node_features(
            positions,
            data["buildings"],
            exponent,
            source,
            settings["height"],
            settings["source_width"],
        )
        targets = np.concatenate(
            [data["velocity"], data["pressure"][:, None], data["scalar"][:, None]], axis=1
        )
        senders, receivers = hm.cell_edges(data["cells"])
        cases.append(
            Case(
                id=int(case_id),
                positions=positions,
                node_type=np.asarray(data["node_type"], np.int32),
                cells=np.asarray(data["cells"], np.int32),
                senders=senders.astype(np.int32),
                receivers=receivers.astype(np.int32),
                features=features,
                condition=np.array([exponent, *source]),
                targets=targets,
                exponent=exponent,
                source=source,
            )
        )
    return cases


@dataclasses.dataclass(frozen=True)
class Normaliser:
    """Means and standard deviations of the inputs and outputs over the training nodes."""

    feature_mean: np.ndarray
    feature_std: np.ndarray
    condition_mean: np.ndarray
    condition_std: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray

    @classmethod
    def fit(cls, cases: list[Case]) -> "Normaliser":
        features = np.concatenate([c.features for c in cases])
        targets = np.concatenate([c.targets for c in cases])
        conditions = np.stack([c.condition for c in cases])
        return cls(
            features.mean(0),
            np.maximum(features.std(0), 1e-6),
            conditions.mean(0),
            np.maximum(conditions.std(0), 1e-6),
            targets.mean(0),
            targets.std(0),
        )


class Batch(eqx.Module):
    """Stacked cases in one size bucket, standardised, as the models take them."""

    mesh: hm.Mesh
    features: jax.Array  # (cases, nodes, 5)
    conditions: jax.Array  # (cases, 3)
    targets: jax.Array  # (cases, nodes, 4), standardised; zero at padding nodes
    anchors: hm.Anchors | None


def stack_meshes(cases: list[Case], sizes) -> hm.Mesh:
    """The cases' meshes padded to `sizes` (nodes, edges, cells) and stacked.

    The padding of `hm.Mesh.pad_to`, done in NumPy on all cases at once: padding nodes
    are typed `PADDING`, padding edges and cells point at the last node slot.
    """
    nodes, edges, cells = sizes
    sink = nodes - 1

    def padded(name, size, fill, dtype):
        return jnp.asarray(
            np.stack([hm.pad_rows(np.asarray(getattr(c, name), dtype), size, fill) for c in cases])
        )

    def mask(kind, size):
        return jnp.asarray(
            np.stack([np.arange(size) < c.counts()[kind] for c in cases])  # real rows first
        )

    return hm.Mesh(
        positions=padded("positions", nodes, 0.0, np.float32),
        node_type=padded("node_type", nodes, hm.NodeType.PADDING, np.int32),
        senders=padded("senders", edges, sink, np.int32),
        receivers=padded("receivers", edges, sink, np.int32),
        cells=padded("cells", cells, sink, np.int32),
        node_mask=mask(0, nodes),
        edge_mask=mask(1, edges),
        cell_mask=mask(2, cells),
    )


def make_batch(cases: list[Case], norm: Normaliser, anchor_counts=None, sizes=None) -> Batch:
    """`cases` padded to one bucket (or to `sizes` (nodes, edges, cells)), standardised.

    With `anchor_counts` (geometry, volume) the anchors of the anchored model are
    selected once here (training); without, the model selects them itself (prediction).
    """
    mesh = stack_meshes(cases, common_sizes(cases) if sizes is None else sizes)
    nodes = mesh.num_nodes

    def standard(values, mean, std):
        return ((values - mean[None, :]) / std[None, :]).astype(np.float32)

    features = np.stack(
        [
            hm.pad_rows(standard(c.features, norm.feature_mean, norm.feature_std), nodes)
            for c in cases
        ]
    )
    targets = np.stack(
        [hm.pad_rows(standard(c.targets, norm.target_mean, norm.target_std), nodes) for c in cases]
    )
    conditions = np.stack([c.condition for c in cases])
    conditions = standard(conditions, norm.condition_mean, norm.condition_std)
    anchors = None
    if anchor_counts is not None:
        anchors = _select_anchors(mesh, *anchor_counts)
    return Batch(
        mesh, jnp.asarray(features), jnp.asarray(conditions), jnp.asarray(targets), anchors
    )


def common_sizes(*case_lists) -> list[int]:
    """The bucket sizes (nodes, edges, cells) that hold every case of every list."""
    counts = np.max([c.counts() for cases in case_lists for c in cases], axis=0)
    return [hm.bucket_size(int(n)) for n in counts]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _select_anchors(mesh, geometry, volume):
    return jax.vmap(lambda m: hm.select_anchors(m, geometry, volume))(mesh)


# ---------------------------------------------------------------------- models


def model_settings(config: Config, name: str, edge_scale: float) -> dict:
    settings = dict(getattr(config, name))
    if name == "meshgraphnet":
        settings["edge_scale"] = edge_scale
    return settings


def build_model(name: str, settings: dict, seed: int):
    return _build_model(name, tuple(sorted(settings.items())), seed)


@functools.cache  # models are immutable: a repeated run (tests) reuses the same one
def _build_model(name: str, settings: tuple, seed: int):
    """A model with NumPy-drawn initial parameters (as Equinox draws them).

    The structure comes from `eqx.filter_eval_shape` (traced, not compiled); drawing each
    parameter with `jax.random` would compile one program per parameter shape (or one
    large program for a jitted constructor), seconds on two cores. Linear layers get
    weights and biases from U(±1/√fan_in), layer norms (1, 0), Transolver's
    temperatures log 0.5: the initialisation of the classes themselves.
    """
    settings = dict(settings)
    if name == "meshgraphnet":
        make = functools.partial(hm.MeshGraphNet, 5, 3, 4, dtype=DTYPE, **settings)
    elif name == "transolver":
        make = functools.partial(hm.Transolver, 5, 3, 4, dtype=DTYPE, **settings)
    else:
        make = functools.partial(
            hm.AnchoredBranchedTransformer, 5, 3, (2, 1, 1), dtype=DTYPE, **settings
        )
    abstract = eqx.filter_eval_shape(lambda key: make(key=key), jax.random.key(0))
    rng = np.random.default_rng([seed, MODELS.index(name)])

    def fill(module):
        if isinstance(module, eqx.nn.Linear):
            limit = 1 / np.sqrt(module.weight.shape[1])
            draw = [rng.uniform(-limit, limit, module.weight.shape)]
            if module.bias is not None:
                draw.append(rng.uniform(-limit, limit, module.bias.shape))
            leaves = tuple(jnp.asarray(a, DTYPE) for a in draw)
            if module.bias is None:
                return eqx.tree_at(lambda m: m.weight, module, leaves[0])
            return eqx.tree_at(lambda m: (m.weight, m.bias), module, leaves)
        if isinstance(module, eqx.nn.LayerNorm):
            ones, zeros = jnp.ones(module.shape, DTYPE), jnp.zeros(module.shape, DTYPE)
            return eqx.tree_at(lambda m: (m.weight, m.bias), module, (ones, zeros))
        return module

    def is_layer(node):
        return isinstance(node, eqx.nn.Linear | eqx.nn.LayerNorm)

    model = jax.tree.map(fill, abstract, is_leaf=is_layer)

    def rest(path, leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        if jax.tree_util.keystr(path).endswith("log_temperature"):
            return jnp.full(leaf.shape, np.log(0.5), DTYPE)
        raise ValueError(f"No NumPy initialisation for {jax.tree_util.keystr(path)}.")

    return jax.tree_util.tree_map_with_path(
        rest, model, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )


def _mean_edge_length(case: Case) -> float:
    vectors = case.positions[case.receivers] - case.positions[case.senders]
    return float(np.mean(np.linalg.norm(vectors, axis=1)))


def anchor_counts(model):
    if isinstance(model, hm.AnchoredBranchedTransformer):
        return model.geometry_anchors, model.volume_anchors
    return None


def _apply(model, batch: Batch, indices):
    """Standardised outputs of `model` on the cases `indices` of `batch`."""
    sub = jax.tree.map(lambda a: a[indices], batch)
    if sub.anchors is None:
        out = jax.vmap(model)(sub.mesh, sub.features, sub.conditions)
    else:
        out = jax.vmap(model)(sub.mesh, sub.features, sub.conditions, sub.anchors)
    return out, sub


@functools.cache
def optimiser(config_key: tuple):
    """Adam, clipped, warm-up + cosine decay; one object per setting (shared compilation)."""
    steps, peak, warmup, final, clip = config_key
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=warmup, decay_steps=steps, end_value=final
    )
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(schedule))


def _optimiser_key(config: Config) -> tuple:
    return (
        config.steps,
        config.learning_rate,
        config.warmup_steps,
        config.final_learning_rate,
        config.clip_norm,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class FlatModel:
    """A model as one parameter vector plus its static part.

    Adam and gradient clipping then act on one array instead of hundreds of small
    ones, which compiles several times faster on CPU (and runs as fast).
    """

    flat: jax.Array
    static: object
    spec: tuple  # (treedef, leaf shapes, leaf dtypes) of the parameters

    @classmethod
    def of(cls, model) -> "FlatModel":
        params, static = eqx.partition(model, eqx.is_inexact_array)
        leaves, treedef = jax.tree.flatten(params)
        spec = (treedef, tuple(leaf.shape for leaf in leaves), tuple(leaf.dtype for leaf in leaves))
        flat = np.concatenate([np.asarray(leaf, DTYPE).ravel() for leaf in leaves])
        return cls(jnp.asarray(flat), static, spec)

    def __hash__(self):  # the structure only: compiled programs are shared across values
        return hash((self.static, self.spec))

    def __eq__(self, other):
        return (
            isinstance(other, FlatModel) and self.spec == other.spec and self.static == other.static
        )

    def model(self, flat=None):
        return eqx.combine(_unflatten(self.flat if flat is None else flat, self.spec), self.static)


def _unflatten(flat, spec):
    treedef, shapes, dtypes = spec
    leaves, offset = [], 0
    for shape, dtype in zip(shapes, dtypes, strict=True):
        size = int(np.prod(shape))
        leaves.append(flat[offset : offset + size].reshape(shape).astype(dtype))
        offset += size
    return jax.tree.unflatten(treedef, leaves)


def _compiler_options(fast_compile: bool):
    # The quick runs (tests) are dominated by compilation; skip LLVM's optimisations.
    return {"xla_backend_optimization_level": 0} if fast_compile else None


@functools.cache
def compiled_steps(template: FlatModel, transform, count: int, batch_size: int, fast: bool):
    """``run(flat, opt_state, key, batch)``: `count` Adam steps in one `lax.scan`.

    Each step draws `batch_size` training cases without replacement from `key`.
    """

    def loss(flat, batch, indices):
        out, sub = _apply(template.model(flat), batch, indices)
        mask = sub.mesh.node_mask[..., None]
        squared = jnp.where(mask, (out - sub.targets) ** 2, 0.0)
        return jnp.sum(squared) / (jnp.sum(sub.mesh.node_mask) * out.shape[-1])

    def run(flat, opt_state, key, batch):
        cases = batch.conditions.shape[0]

        def step(carry, _):
            flat, opt_state, key = carry
            key, batch_key = jax.random.split(key)
            indices = jax.random.choice(batch_key, cases, (batch_size,), replace=False)
            value, grads = jax.value_and_grad(loss)(flat, batch, indices)
            updates, opt_state = transform.update(grads, opt_state, flat)
            return (flat + updates.astype(flat.dtype), opt_state, key), value

        (flat, opt_state, key), losses = jax.lax.scan(
            step, (flat, opt_state, key), None, length=count
        )
        return flat, opt_state, key, losses

    return jax.jit(run, compiler_options=_compiler_options(fast))


@functools.cache
def compiled_predict(template: FlatModel, fast: bool):
    """``predict(flat, batch, indices)``: standardised outputs on those cases."""

    def run(flat, batch, indices):
        return _apply(template.model(flat), batch, indices)[0]

    return jax.jit(run, compiler_options=_compiler_options(fast))


class _TrainState(eqx.Module):
    params: object
    opt_state: object
    key: jax.Array
    losses: np.ndarray
    step: int


class _Stop(Exception):
    """Raised to stop training early, as if the process were killed (tests of --resume)."""


def train(name, model, batch, config: Config, directory: Path, resume, stop_after, progress, fast):
    """Train `model` (a `FlatModel`) on `batch` with checkpoints in `directory`.

    Returns the trained `FlatModel`, the loss history, the seconds spent and the steps
    run in this process.
    """
    template = model
    transform = optimiser(_optimiser_key(config))
    key = jax.random.fold_in(jax.random.key(config.seed), MODELS.index(name) + 100)

    def init_state():
        flat = template.flat
        return _TrainState(flat, transform.init(flat), key, np.full(config.steps, np.nan), 0)

    has_checkpoint = False
    if resume and directory.is_dir():
        with Checkpointer(directory, create=False) as existing:
            has_checkpoint = existing.latest_step() is not None
    run_config = {
        "model": name,
        "steps": config.steps,
        "chunk": config.chunk,
        "batch_size": config.batch_size,
        "targets_sha256": digest(np.asarray(batch.targets)),
    }
    state, _, checkpointer = resume_or_init(
        directory, init_state, resume=has_checkpoint, config=run_config, save_every=config.chunk
    )
    batch_size = min(config.batch_size, batch.conditions.shape[0])

    def advance(state, count):
        if stop_after is not None and state.step >= stop_after:
            raise _Stop
        run = compiled_steps(template, transform, count, batch_size, fast)
        flat, opt_state, run_key, losses = run(state.params, state.opt_state, state.key, batch)
        return _TrainState(flat, opt_state, run_key, state.losses, state.step), losses

    start = time.perf_counter()
    first_step = state.step
    state = train_in_chunks(
        state,
        advance,
        steps=config.steps,
        chunk=config.chunk,
        checkpointer=checkpointer,
        progress=progress,
        what=LABELS[name],
    )
    seconds = time.perf_counter() - start
    trained = dataclasses.replace(template, flat=state.params)
    return trained, state.losses, seconds, config.steps - first_step


# ---------------------------------------------------------------------- evaluation


def predict(model: FlatModel, batch: Batch, norm: Normaliser, chunk: int, fast: bool):
    """Physical-unit predictions ``(cases, nodes, 4)`` (one compiled chunk size)."""
    run = compiled_predict(model, fast)
    cases = batch.conditions.shape[0]
    chunk = min(chunk, cases)
    outputs = []
    for start in range(0, cases, chunk):
        indices = np.minimum(np.arange(start, start + chunk), cases - 1)
        outputs.append(np.asarray(run(model.flat, batch, jnp.asarray(indices))))
    out = np.concatenate(outputs)[:cases]
    return out * norm.target_std[None, None, :] + norm.target_mean[None, None, :]


def nmse(predictions: np.ndarray, cases: list[Case]) -> dict[str, float]:
    """Per field: 100 × squared error / variance, pooled over every real node of `cases`."""
    truth = np.concatenate([c.targets for c in cases])
    pred = np.concatenate([p[: len(c.targets)] for p, c in zip(predictions, cases, strict=True)])
    error = np.sum((pred - truth) ** 2, axis=0)
    variance = np.sum((truth - truth.mean(0)[None, :]) ** 2, axis=0)
    return {field: float(100 * e / v) for field, e, v in zip(FIELDS, error, variance, strict=True)}


def time_prediction(model: FlatModel, batch: Batch, count: int, repeats: int, fast: bool):
    """Best-of-`repeats` seconds of one compiled prediction per case (compile excluded).

    `batch` has no precomputed anchors, so the anchored model's anchor selection is
    part of the timed prediction.
    """
    run = compiled_predict(model, fast)
    seconds = []
    for case in range(count):
        indices = jnp.asarray([case])
        jax.block_until_ready(run(model.flat, batch, indices))  # compile, warm up
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(run(model.flat, batch, indices))
            best = min(best, time.perf_counter() - start)
        seconds.append(best)
    return seconds


def time_fem(cases: list[Case], index: dict, repeats: int) -> list[float]:
    """Best-of-`repeats` seconds of the finite-element solve (flow + scalar) per case."""
    module = mesh_data()
    fields = {f.name for f in dataclasses.fields(module.Config)}
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in index["settings"].items()}
    data_config = module.Config(**{k: v for k, v in settings.items() if k in fields})
    seconds = []
    for case in cases:
        positions = case.positions
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            module.solve_case(positions, case.cells, case.exponent, case.source, data_config)
            best = min(best, time.perf_counter() - start)
        seconds.append(best)
    return seconds


# ---------------------------------------------------------------------- figures


def _dpi(quick: bool) -> int:
    return 40 if quick else 90  # quick: files to check, not to read


def _figure(rows: int, columns: int, size, quick: bool):
    """A grid of axes; --quick uses fixed margins (constrained layout costs seconds)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        rows, columns, figsize=size, squeeze=False, layout=None if quick else "constrained"
    )
    if quick:
        figure.subplots_adjust(left=0.03, right=0.95, top=0.9, bottom=0.02, hspace=0.2)
    return figure, axes


def field_figures(out: Path, cases, predictions, which: str, quick: bool) -> list[str]:
    """True vs predicted fields and error maps on the first case of a set."""
    import matplotlib.pyplot as plt
    from matplotlib.tri import Triangulation

    case = cases[0]
    n = len(case.targets)
    positions = case.positions
    triangulation = Triangulation(positions[:, 0], positions[:, 1], case.cells)
    length = positions[:, 0].max()
    names = {"u": "u", "v": "v", "p": "p", "c": "scalar c"}
    written = []

    models = list(predictions)
    columns = ["truth", *models]
    width = len(columns)
    figure, axes = _figure(4, width, (width * 0.55 * length + 1, 4 * 0.8), quick)
    for row, field in enumerate(FIELDS):
        truth = case.targets[:, row]
        low, high = np.percentile(truth, [0.5, 99.5])
        for column, source in enumerate(columns):
            values = truth if source == "truth" else predictions[source][0, :n, row]
            axis = axes[row, column]
            image = axis.tripcolor(triangulation, values, vmin=low, vmax=high, cmap="viridis")
            axis.set_aspect("equal")
            axis.set_xticks([]), axis.set_yticks([])
            if row == 0:
                axis.set_title("truth (FEM)" if source == "truth" else LABELS[source])
            if column == 0:
                axis.set_ylabel(names[field])
        figure.colorbar(image, ax=axes[row, -1], shrink=0.8)
    path = out / f"mesh_fields_{which}.png"
    figure.savefig(path, dpi=_dpi(quick))
    plt.close(figure)
    written.append(path.name)

    width = len(models)
    figure, axes = _figure(4, width, (width * 0.55 * length + 1, 4 * 0.8), quick)
    for row, field in enumerate(FIELDS):
        truth = case.targets[:, row]
        errors = {m: predictions[m][0, :n, row] - truth for m in models}
        limit = max(np.percentile(np.abs(e), 99.5) for e in errors.values())
        for column, name in enumerate(models):
            axis = axes[row, column]
            image = axis.tripcolor(
                triangulation, errors[name], vmin=-limit, vmax=limit, cmap="RdBu_r"
            )
            axis.set_aspect("equal")
            axis.set_xticks([]), axis.set_yticks([])
            if row == 0:
                axis.set_title(f"{LABELS[name]}: prediction − truth")
            if column == 0:
                axis.set_ylabel(names[field])
        figure.colorbar(image, ax=axes[row, -1], shrink=0.8)
    path = out / f"mesh_errors_{which}.png"
    figure.savefig(path, dpi=_dpi(quick))
    plt.close(figure)
    written.append(path.name)
    return written


def loss_figure(out: Path, losses: dict, quick: bool) -> str:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    figure.subplots_adjust(left=0.13, right=0.97, top=0.95, bottom=0.14)
    for name, history in losses.items():
        window = max(1, len(history) // 50)
        smooth = np.convolve(history, np.ones(window) / window, mode="valid")
        axis.semilogy(np.arange(len(smooth)) + window, smooth, label=LABELS[name])
    axis.set_xlabel("Adam step")
    axis.set_ylabel("training loss (standardised MSE)")
    axis.grid(alpha=0.3)
    axis.legend()
    path = out / "mesh_training_loss.png"
    figure.savefig(path, dpi=_dpi(quick))
    plt.close(figure)
    return path.name


# ---------------------------------------------------------------------- main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and batches")
    parser.add_argument("--out", type=Path, help="results (default runs/mesh_train[-quick])")
    parser.add_argument("--data", type=Path, help="data sets (default <out>/data)")
    parser.add_argument(
        "--checkpoint-dir", type=Path, help="checkpoints (default checkpoints/mesh_train[-quick])"
    )
    parser.add_argument("--quick", action="store_true", help="tiny data and models (tests)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    parser.add_argument("--steps", type=int, help="Adam steps per model (2500)")
    parser.add_argument("--cases", type=int, help="cases in the training channel set (300)")
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated subset of {','.join(MODELS)} (all)",
    )
    parser.add_argument("--workers", type=int, help="processes generating data (2; 1 with --quick)")
    parser.add_argument(
        "--stop-after", type=int, help=argparse.SUPPRESS
    )  # tests: stop each model's training after this many steps, as if killed
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    suffix = "-quick" if args.quick else ""
    args.out = args.out or Path(f"runs/mesh_train{suffix}")
    args.data = args.data or args.out / "data"
    args.workers = args.workers or (1 if args.quick else 2)
    args.models = [name.strip() for name in args.models.split(",")]
    unknown = set(args.models) - set(MODELS)
    if unknown or not args.models:
        parser.error(f"--models takes names from {', '.join(MODELS)}; got {sorted(unknown)}")
    args.checkpoint_dir = args.checkpoint_dir or Path(f"checkpoints/mesh_train{suffix}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    changes = dict(QUICK) if args.quick else {}
    for name in ("steps", "cases"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    config = Config(seed=args.seed, **changes)
    if config.steps % config.chunk and config.steps > config.chunk:
        raise ValueError(f"--steps must be a multiple of the chunk ({config.chunk}).")
    prepare_run_directory(args.checkpoint_dir, dataclasses.asdict(config), resume=args.resume)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    progress = not args.no_progress
    wall_start = time.perf_counter()

    # Data: the training channel (train / test splits) and the two larger-mesh sets.
    start = time.perf_counter()
    indices = ensure_data(config, args.data, args.workers)
    splits = indices["base"]["splits"]
    train_cases = load_cases(indices["base"], splits["train"])
    sets = {
        "test": load_cases(indices["base"], splits["test"]),
        "longer": load_cases(indices["longer"], [c["id"] for c in indices["longer"]["cases"]]),
        "finer": load_cases(indices["finer"], [c["id"] for c in indices["finer"]["cases"]]),
    }
    norm = Normaliser.fit(train_cases)
    edge_scale = float(np.mean([_mean_edge_length(c) for c in train_cases]))
    # Prediction batches: one per set (each in its own bucket); --quick pads every set
    # to one size so that each model compiles one prediction program.
    sizes = common_sizes(*sets.values()) if args.quick else None
    batches = {s: make_batch(cases, norm, sizes=sizes) for s, cases in sets.items()}
    chunk = 1 if args.quick else 8
    fast = args.quick  # compile without LLVM optimisations (tests)
    timed = sets["test"][: config.timing_cases]
    timing_batch = batches["test"] if args.quick else make_batch(timed, norm)
    data_seconds = time.perf_counter() - start

    results, losses, predictions, digests = {}, {}, {}, {}
    for name in args.models:
        settings = model_settings(config, name, edge_scale)
        network = build_model(name, settings, config.seed)
        train_batch = make_batch(train_cases, norm, anchor_counts(network))
        model = FlatModel.of(network)
        if args.stop_after is None:
            untrained = predict(model, batches["test"], norm, chunk, fast)
            untrained = nmse(untrained, sets["test"])
        try:
            model, history, seconds, steps_run = train(
                name,
                model,
                train_batch,
                config,
                args.checkpoint_dir / name,
                args.resume,
                args.stop_after,
                progress,
                fast,
            )
        except _Stop:
            continue
        digests[name] = digest(np.asarray(model.flat))
        if args.stop_after is not None:
            continue
        losses[name] = history
        predictions[name] = {s: predict(model, batches[s], norm, chunk, fast) for s in SETS}
        results[name] = {
            "parameters": int(model.flat.size),
            "settings": settings,
            "nmse_percent": {s: nmse(predictions[name][s], sets[s]) for s in SETS},
            "untrained_test_nmse_percent": untrained,
            "initial_loss": float(np.mean(history[: max(1, config.steps // 20)])),
            "final_loss": float(np.mean(history[-max(1, config.steps // 20) :])),
            "training_seconds_this_process": seconds,
            "seconds_per_step": seconds / steps_run if steps_run else None,
            "predict_seconds": time_prediction(
                model, timing_batch, len(timed), config.timing_repeats, fast
            ),
            "params_sha256": digests[name],
        }
    if args.stop_after is not None:
        return {"stopped_after": args.stop_after, "params_sha256": digests}

    # The finite-element solves of the timed test cases, on this machine, now.
    fem_seconds = time_fem(timed, indices["base"], config.fem_repeats)
    for result in results.values():
        ratios = np.asarray(result["predict_seconds"]) / np.asarray(fem_seconds)
        result["predict_over_fem_percent"] = float(100 * np.median(ratios))

    figures = [loss_figure(args.out, losses, args.quick)]
    for which in ("test",) if args.quick else ("test", "longer"):
        figures += field_figures(
            args.out, sets[which], {m: predictions[m][which] for m in results}, which, args.quick
        )

    def nodes(cases):
        counts = [c.counts()[0] for c in cases]
        return {"cases": len(cases), "nodes_min": min(counts), "nodes_max": max(counts)}

    metrics = {
        "models": results,
        "fields": list(FIELDS),
        "data": {"train": nodes(train_cases)} | {s: nodes(c) for s, c in sets.items()},
        "fem_seconds": fem_seconds,
        "timed_case_ids": [c.id for c in timed],
        "edge_scale": edge_scale,
        "data_seconds": data_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "figures": figures,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print_table(metrics)
    return metrics


def print_table(metrics: dict) -> None:
    header = f"{'model':<15} {'params':>8} {'set':<7}" + "".join(f"{f:>8}" for f in FIELDS)
    print("\nNMSE (% of the field's variance in the set)")
    print(header + f"{'pred/FEM':>10}")
    for name, result in metrics["models"].items():
        for row, which in enumerate(SETS):
            values = "".join(f"{result['nmse_percent'][which][f]:>8.2f}" for f in FIELDS)
            lead = f"{LABELS[name]:<15} {result['parameters']:>8d}" if row == 0 else " " * 24
            ratio = f"{result['predict_over_fem_percent']:>9.2f}%" if row == 0 else ""
            print(f"{lead} {which:<7}{values}{ratio}")
    data = metrics["data"]
    print(
        f"train {data['train']['cases']} cases, test {data['test']['cases']}, longer "
        f"{data['longer']['cases']}, finer {data['finer']['cases']}; FEM solve "
        f"{np.median(metrics['fem_seconds']):.2f} s per test case"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
