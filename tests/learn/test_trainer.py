"""The trainer: a linear correction learnt to the least-squares answer (plain and
inverse-variance weighted), a run killed and resumed ends bit for bit like an
uninterrupted one, early stopping keeps the best validation parameters, and bad input
fails early with nothing overwritten."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hybridda import Resolvent, simulate
from hybridda.dynamics import Lorenz96
from hybridda.hybrid import NeuralDynamics, Surrogate, TendencyCorrection
from hybridda.learn import (
    AnalysisDataset,
    RolloutLoss,
    RolloutPairs,
    Trainer,
    default_trainable,
    rollout_pairs,
    train_validation_split,
)
from hybridda.nn import MLP, PeriodicCNN
from hybridda.plot import training_curves

from .helpers import (
    LinearMap,
    datasets,
    linear_correction_model,
    linear_trajectories,
    orthogonal,
)

N = 4
PHYSICS = 0.7 * orthogonal(1, N)  # A, the known part
TRUE_DYNAMICS = 0.97 * orthogonal(2, N)  # A + W_true
W_TRUE = TRUE_DYNAMICS - PHYSICS


def assert_leaves_identical(a, b):
    """Every array leaf of `a` equals the one of `b` (bitwise, no tolerance; NaN = NaN for
    the unused slots of the loss history)."""
    leaves_a, leaves_b = (
        jax.tree.leaves(eqx.filter(a, eqx.is_array)),
        jax.tree.leaves(eqx.filter(b, eqx.is_array)),
    )
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def gradient_descent_rate(pairs: RolloutPairs, weights=None) -> float:
    """1 / (largest curvature) of the one-step loss in each row of W: GD then contracts."""
    x = np.asarray(pairs.inputs)
    weights = np.ones((len(x), N)) if weights is None else weights
    largest = max(
        np.linalg.eigvalsh(2 / (len(x) * N) * (x * weights[:, i : i + 1]).T @ x)[-1]
        for i in range(N)
    )
    return 1.0 / largest


# ---------------------------------------------------------------------- exact answers


def test_learns_the_exact_linear_correction():
    """Noise-free x⁺ = (A + W_true) x: full-batch gradient descent on the one-step loss
    of x⁺ = A x + W x lands on W_true, which is also NumPy's least-squares solution."""
    runs = linear_trajectories(TRUE_DYNAMICS, trajectories=8, cycles=40)
    pairs = rollout_pairs(datasets(runs), rollout=1)
    trainer = Trainer(
        linear_correction_model(PHYSICS),
        pairs,
        key=jax.random.key(0),
        steps=300,
        batch_size=None,
        learning_rate=gradient_descent_rate(pairs),
        optimiser=optax.sgd,
        eval_every=100,
    )
    result = trainer.fit()
    learnt = np.asarray(result.model.correction.weight)
    X = np.concatenate([run[:-1] for run in runs])
    residual = np.concatenate([run[1:] for run in runs]) - X @ PHYSICS.T
    least_squares = np.linalg.lstsq(X, residual, rcond=None)[0].T
    np.testing.assert_allclose(least_squares, W_TRUE, atol=1e-12)
    np.testing.assert_allclose(learnt, W_TRUE, atol=1e-12)
    # The physical part is frozen (not trained) by default.
    assert result.model.resolvent.matrix is trainer.model.resolvent.matrix
    np.testing.assert_array_equal(result.model.resolvent.matrix, PHYSICS)
    assert result.history.train_loss[-1] < 1e-25
    assert list(result.history.step) == [0, 100, 200, 300]


def test_weighted_fit_is_the_weighted_least_squares_solution():
    """Noisy analyses with a variance per cycle and variable: the trained W minimises
    Σ (x⁺ - A x - W x)² / (σ² + floor), i.e. it is the row-by-row weighted least-squares
    solution computed by NumPy (not W_true: the noise moves it)."""
    rng = np.random.default_rng(5)
    truth = linear_trajectories(TRUE_DYNAMICS, trajectories=6, cycles=30, seed=1)
    variances = [rng.uniform(0.5, 2.0, run.shape) * 0.05**2 for run in truth]
    analyses = [
        run + np.sqrt(v) * rng.standard_normal(run.shape)
        for run, v in zip(truth, variances, strict=True)
    ]
    loss = RolloutLoss(variance_floor=1e-3)
    pairs = rollout_pairs(datasets(analyses, variances), rollout=1)
    weights = 1.0 / (np.asarray(pairs.variance)[:, 0] + 1e-3)
    result = Trainer(
        linear_correction_model(PHYSICS),
        pairs,
        key=jax.random.key(0),
        steps=400,
        batch_size=None,
        learning_rate=gradient_descent_rate(pairs, weights),
        optimiser=optax.sgd,
        loss=loss,
        eval_every=400,
        progress=False,
    ).fit()
    X = np.concatenate([a[:-1] for a in analyses])
    residual = np.concatenate([a[1:] for a in analyses]) - X @ PHYSICS.T
    w = 1.0 / (np.concatenate([v[1:] for v in variances]) + 1e-3)
    oracle = np.stack(
        [
            np.linalg.lstsq(
                np.sqrt(w[:, i : i + 1]) * X, np.sqrt(w[:, i]) * residual[:, i], rcond=None
            )[0]
            for i in range(N)
        ]
    )
    np.testing.assert_allclose(result.model.correction.weight, oracle, atol=1e-10)
    assert np.abs(oracle - W_TRUE).max() > 1e-3  # the weighting problem is not trivial


# ---------------------------------------------------------------------- resume


def surrogate_trainer(directory=None, **changes):
    """A small MLP surrogate trained with Adam on minibatches of 2-step rollouts."""
    runs = linear_trajectories(TRUE_DYNAMICS, trajectories=6, cycles=30, seed=3)
    variances = [np.full(run.shape[0], 0.01) for run in runs]
    train, validation = train_validation_split(
        datasets(runs, variances), 0.25, key=jax.random.key(1), block_length=10
    )
    network = MLP(N, N, width=16, depth=1, activation=jnp.tanh, key=jax.random.key(2))
    settings = dict(
        key=jax.random.key(3),
        steps=30,
        batch_size=16,
        learning_rate=3e-3,
        eval_every=5,
        patience=10,
        checkpoint_dir=directory,
        checkpoint_every=None if directory is None else 4,
        progress=False,
        loss=RolloutLoss(discount=0.8, variance_floor=1e-4, l2=1e-4),
    )
    settings.update(changes)
    return Trainer(
        Surrogate(network, cycle_length=1.0),
        rollout_pairs(train, 2),
        rollout_pairs(validation, 2),
        **settings,
    )


class Killed(Exception):
    pass


def kill_at(step):
    def callback(trainer):
        if trainer.step == step:
            raise Killed

    return callback


def test_resumed_run_is_bitwise_identical(tmp_path):
    reference = surrogate_trainer()  # never interrupted, never checkpointed
    expected = reference.fit()
    assert 0 < expected.history.best_step and len(expected.history.step) == 7

    # Killed at step 15 (an evaluation, between checkpoints 12 and 16): resumes from 12.
    killed = surrogate_trainer(tmp_path / "killed")
    with pytest.raises(Killed):
        killed.fit(callback=kill_at(15))
    assert killed.step == 15
    resumed = surrogate_trainer(tmp_path / "killed", resume=True)
    assert resumed.step == 12
    result = resumed.fit()

    # Paused at step 7 (not a multiple of checkpoint_every), resumed by a new trainer.
    paused = surrogate_trainer(tmp_path / "paused")
    paused.fit(until=7)
    continued = surrogate_trainer(tmp_path / "paused", resume=True)
    assert continued.step == 7
    continued_result = continued.fit()

    for run, outcome in ((resumed, result), (continued, continued_result)):
        assert_leaves_identical(outcome.model, expected.model)
        assert_leaves_identical(outcome.last_model, expected.last_model)
        assert_leaves_identical(run.state, reference.state)  # optimiser state, key, best, ...
        np.testing.assert_array_equal(outcome.history.step, expected.history.step)
        np.testing.assert_array_equal(outcome.history.train_loss, expected.history.train_loss)
        np.testing.assert_array_equal(
            outcome.history.validation_loss, expected.history.validation_loss
        )
        assert outcome.history.best_step == expected.history.best_step
    # A finished run resumed again has nothing left to do.
    again = surrogate_trainer(tmp_path / "killed", resume=True)
    assert again.step == 30 and again.finished
    assert_leaves_identical(again.fit().model, expected.model)


# ---------------------------------------------------------------------- early stopping


def test_early_stopping_keeps_the_best_validation_parameters(tmp_path):
    """Training data from x⁺ = 0.9 x, validation data from x⁺ = 0.5 x: gradient descent
    from W = 0 passes W = 0.5 I, where the validation loss is lowest, then moves on."""
    eye = np.eye(N)
    train = rollout_pairs(datasets(linear_trajectories(0.9 * eye, 20, 3, seed=0)), 1)
    validation = rollout_pairs(datasets(linear_trajectories(0.5 * eye, 20, 3, seed=1)), 1)
    model = linear_correction_model(np.zeros((N, N)), init=np.zeros((N, N)))
    settings = dict(
        key=jax.random.key(0),
        batch_size=None,
        learning_rate=0.05 * gradient_descent_rate(train),
        optimiser=optax.sgd,
        eval_every=2,
        progress=False,
    )
    result = Trainer(model, train, validation, steps=200, patience=3, **settings).fit()
    history = result.history
    best = int(np.argmin(history.validation_loss))
    assert history.stopped_early and history.step[-1] < 200
    assert history.best_step == history.step[best] > 0
    assert history.step[-1] == history.best_step + 3 * 2  # three evaluations without progress
    assert history.best_validation_loss == history.validation_loss[best]
    assert np.all(np.diff(history.validation_loss[: best + 1]) < 0)
    assert np.all(history.validation_loss[best + 1 :] > history.best_validation_loss)
    # The reported losses are RolloutLoss on the validation set.
    np.testing.assert_allclose(
        history.validation_loss[0], RolloutLoss()(model, validation), rtol=1e-12
    )
    np.testing.assert_allclose(
        RolloutLoss()(result.model, validation), history.best_validation_loss, rtol=1e-12
    )
    # The kept parameters are exactly those after `best_step` steps, not the last ones.
    shorter = Trainer(model, train, validation, steps=int(history.best_step), **settings).fit()
    assert_leaves_identical(result.model, shorter.last_model)
    assert not np.array_equal(result.model.correction.weight, result.last_model.correction.weight)
    # The history plots, also after a round trip through JSON (NaN train loss at step 0).
    saved = json.loads(json.dumps(history.as_dict()))
    assert saved["train_loss"][0] is None and saved["best_step"] == history.best_step
    for source in (history, saved):
        assert training_curves(source, tmp_path / "curves.png").stat().st_size > 0


# ---------------------------------------------------------------------- what is trained


def test_default_trainable_is_the_network_only():
    surrogate = Surrogate(MLP(N, N, width=8, depth=1, key=jax.random.key(0)), cycle_length=1.0)
    trained, _ = eqx.partition(surrogate, default_trainable(surrogate))
    # 2 weights + 2 biases, not the MLP's fixed input mean / std / output scale.
    assert len(jax.tree.leaves(trained)) == 4
    assert trained.network.input_mean is None and trained.network.output_scale is None
    hybrid = linear_correction_model(PHYSICS)
    trained, _ = eqx.partition(hybrid, default_trainable(hybrid))
    assert trained.resolvent.matrix is None and trained.correction.weight is not None
    # To learn the physics too: switch its leaf on in the spec.
    spec = eqx.tree_at(lambda m: m.resolvent.matrix, default_trainable(hybrid), True)
    pairs = rollout_pairs(datasets(linear_trajectories(TRUE_DYNAMICS, 2, 10)), 1)
    result = Trainer(
        hybrid,
        pairs,
        key=jax.random.key(0),
        steps=2,
        batch_size=None,
        trainable=spec,
        progress=False,
    ).fit()
    assert not np.array_equal(result.model.resolvent.matrix, PHYSICS)


def test_tendency_correction_trains_the_network_not_the_physics():
    """``Resolvent(TendencyCorrection(Lorenz96, cnn))``: by default only the CNN moves."""
    physics = Lorenz96(n=8, forcing=8.0)
    truth = simulate(Resolvent(physics, 0.05), physics.default_initial_state() + 0.1, 40)
    pairs = rollout_pairs(AnalysisDataset(truth), rollout=2)
    cnn = PeriodicCNN(widths=(), kernel_sizes=3, key=jax.random.key(0))
    model = Resolvent(TendencyCorrection(Lorenz96(n=8, forcing=7.0), cnn), 0.05)
    result = Trainer(
        model, pairs, key=jax.random.key(1), steps=2, batch_size=8, progress=False
    ).fit()
    assert result.model.dynamics.dynamics.forcing is model.dynamics.dynamics.forcing
    assert not np.array_equal(
        result.model.dynamics.correction.layers[0].weight, cnn.layers[0].weight
    )
    neural = Resolvent(NeuralDynamics(cnn, n=8), 0.05)
    trained, _ = eqx.partition(neural, default_trainable(neural))
    assert len(jax.tree.leaves(trained)) == 2  # the CNN's kernel and bias


# ---------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def pairs():
    runs = linear_trajectories(TRUE_DYNAMICS, 4, 20)
    return rollout_pairs(datasets(runs), 2)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"learning_rate": 0.0}, ValueError, "`learning_rate` must be a finite number > 0"),
        ({"learning_rate": -1e-3}, ValueError, "`learning_rate` must be a finite number > 0"),
        ({"learning_rate": math.nan}, ValueError, "`learning_rate` must be a finite number > 0"),
        ({"steps": 0}, ValueError, "`steps` .* must be an integer >= 1"),
        ({"batch_size": 0}, ValueError, "`batch_size` .* must be an integer >= 1"),
        ({"batch_size": 10_000}, ValueError, "`batch_size` \\(10000\\) exceeds the 72"),
        ({"eval_every": 0}, ValueError, "`eval_every`"),
        ({"patience": 3}, ValueError, "`patience` .* needs `validation`"),
        ({"resume": True}, ValueError, "`resume=True` needs the `checkpoint_dir`"),
        ({"checkpoint_every": 5}, ValueError, "`checkpoint_every` needs a `checkpoint_dir`"),
        ({"trainable": False}, ValueError, "`trainable` selects no floating-point array"),
        ({"optimiser": "adam"}, TypeError, "`optimiser` must be a factory|parameter 'optimiser'"),
        ({"loss": "mse"}, TypeError, "`loss` must be a RolloutLoss|parameter 'loss'"),
    ],
)
def test_bad_settings(pairs, changes, error, message):
    # (A wrong type may also be caught first by the runtime type check, when it is on.)
    settings = {"key": jax.random.key(0), "steps": 10, "progress": False} | changes
    with pytest.raises(error, match=message):
        Trainer(linear_correction_model(PHYSICS), pairs, **settings)


def test_bad_data_and_models(pairs):
    settings = {"key": jax.random.key(0), "steps": 10, "progress": False}
    model = linear_correction_model(PHYSICS)
    empty = RolloutPairs(jnp.zeros((0, N)), jnp.zeros((0, 2, N)))
    with pytest.raises(ValueError, match="`train` holds no example"):
        Trainer(model, empty, **settings)
    with pytest.raises(
        TypeError, match="`train` must be RolloutPairs.*rollout_pairs|parameter 'train'"
    ):
        Trainer(model, AnalysisDataset(np.ones((5, N))), **settings)
    one_step = rollout_pairs(datasets(linear_trajectories(TRUE_DYNAMICS, 2, 10)), 1)
    with pytest.raises(ValueError, match="`validation` has rollout 1 .* `train` has 2"):
        Trainer(model, pairs, one_step, **settings)
    # A correction with one output broadcasts silently inside M(x) + c(x): caught here.
    narrow = linear_correction_model(PHYSICS, out_size=1)
    with pytest.raises(
        ValueError, match=r"`model.correction` maps a state of shape \(4,\) to \(1,\)"
    ):
        Trainer(narrow, pairs, **settings)
    wide = Surrogate(eqx.nn.Linear(N, N + 1, key=jax.random.key(0)), cycle_length=1.0)
    with pytest.raises(ValueError, match=r"`model.network` maps a state of shape \(4,\) to \(5,\)"):
        Trainer(wide, pairs, **settings)
    unfit = Surrogate(eqx.nn.Linear(N + 1, N, key=jax.random.key(0)), cycle_length=1.0)
    with pytest.raises(ValueError, match=r"`model.network` cannot be applied .* shape \(4,\)"):
        Trainer(unfit, pairs, **settings)
    with pytest.raises(ValueError, match=r"`model` maps a state of shape \(4,\) to \(2, 4\)"):
        Trainer(LinearMap(jnp.ones((2, N, N))), pairs, **settings)


def test_incompatible_checkpoint_is_refused_and_left_alone(tmp_path, pairs):
    def trainer(data=pairs, **changes):
        settings = dict(
            key=jax.random.key(0),
            steps=4,
            batch_size=8,
            learning_rate=0.1,
            eval_every=2,
            checkpoint_dir=tmp_path / "run",
            progress=False,
        )
        return Trainer(linear_correction_model(PHYSICS), data, **(settings | changes))

    trainer().fit()

    def snapshot():
        return {
            path: (path.stat().st_mtime_ns, path.read_bytes() if path.is_file() else None)
            for path in sorted((tmp_path / "run").rglob("*"))
        }

    before = snapshot()
    with pytest.raises(ValueError, match="learning_rate: saved 0.1, now 0.2"):
        trainer(learning_rate=0.2, resume=True)
    one_step = rollout_pairs(datasets(linear_trajectories(TRUE_DYNAMICS, 4, 20)), 1)
    with pytest.raises(ValueError, match="rollout: saved 2, now 1"):
        trainer(data=one_step, resume=True)
    with pytest.raises(FileExistsError, match="already holds checkpoints .* --resume"):
        trainer()
    with pytest.raises(FileNotFoundError, match="Cannot resume"):
        trainer(checkpoint_dir=tmp_path / "elsewhere", resume=True)
    assert snapshot() == before
    assert trainer(resume=True).step == 4
