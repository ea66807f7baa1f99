"""Checkpoints: bit-exact round trips, keep-last-k, damaged or missing checkpoints raise,
and a training run resumed from disk ends bit-identical to the uninterrupted run."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hybridda.checkpoint import (
    Checkpointer,
    CheckpointError,
    checkpoint_directory,
    has_checkpoint,
    prepare_run_directory,
    resume_or_init,
)
from hybridda.nn import MLP

OPTIMISER = optax.adam(1e-2)


def init_state(seed=0, width=8):
    """(model, opt_state, step, key) of a small regression run."""
    model_key, data_key = jax.random.split(jax.random.key(seed))
    model = MLP(3, 2, width=width, depth=2, key=model_key, input_std=2.0)
    opt_state = OPTIMISER.init(eqx.filter(model, eqx.is_inexact_array))
    return {"model": model, "opt_state": opt_state, "step": 0, "key": data_key}


def assert_bitwise_equal(a, b):
    leaves_a, treedef_a = jax.tree.flatten(a)
    leaves_b, treedef_b = jax.tree.flatten(b)
    assert treedef_a == treedef_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if isinstance(x, jax.Array | np.ndarray):
            assert type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            assert type(x) is type(y) and x == y


def trained_a_little(state):
    """A state whose every leaf differs from the initial one (so a round trip means something)."""
    return train(state, 3)


# ------------------------------------------------------------------ training loop


@eqx.filter_jit
def train_step(model, opt_state, key):
    batch_key, next_key = jax.random.split(key)
    x = jax.random.normal(batch_key, (16, 3))
    target = jnp.stack([jnp.sin(x[:, 0]) * x[:, 1], jnp.cos(x[:, 2])], axis=1)

    def loss(m):
        return jnp.mean((jax.vmap(m)(x) - target) ** 2)

    grads = eqx.filter_grad(loss)(model)
    updates, opt_state = OPTIMISER.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, next_key


def train(state, steps, checkpointer=None):
    model, opt_state, key, step = state["model"], state["opt_state"], state["key"], state["step"]
    for _ in range(steps):
        model, opt_state, key = train_step(model, opt_state, key)
        step += 1
        state = {"model": model, "opt_state": opt_state, "step": step, "key": key}
        if checkpointer is not None:
            checkpointer.save(step, state)
    return state


def test_resumed_training_is_bit_identical_to_uninterrupted(tmp_path):
    uninterrupted = train(init_state(), 20)

    # First process: 10 steps, saving every 5, then "killed".
    state, step, checkpointer = resume_or_init(
        tmp_path / "run", init_state, resume=False, config={"lr": 1e-2}, save_every=5
    )
    assert step == 0
    train(state, 10, checkpointer)
    checkpointer.close()
    del state, checkpointer

    # Second process: everything is rebuilt from disk.
    state, step, checkpointer = resume_or_init(
        tmp_path / "run", init_state, resume=True, config={"lr": 1e-2}, save_every=5
    )
    assert step == state["step"] == 10
    resumed = train(state, 20 - step, checkpointer)
    assert checkpointer.all_steps() == [10, 15, 20]
    checkpointer.close()
    assert_bitwise_equal(resumed, uninterrupted)
    # A restore of the last checkpoint is the final state too.
    with Checkpointer(tmp_path / "run") as reader:
        assert_bitwise_equal(reader.restore(init_state()), uninterrupted)


# ------------------------------------------------------------------ round trips


def test_round_trip_is_bitwise(tmp_path):
    state = trained_a_little(init_state())
    state |= {
        "raw_key": jax.random.PRNGKey(7),  # uint32 key data
        "threefry": jax.random.key(3, impl="threefry2x32"),
        "float32": jnp.arange(4, dtype=jnp.float32) / 3,
        "numpy": np.arange(6, dtype=np.int16).reshape(2, 3),
        "scalar_step": jnp.asarray(12),
        "flags": (True, 2.5, np.float32(0.25)),
        "name": "kept from like",
    }
    with Checkpointer(tmp_path) as checkpointer:
        assert checkpointer.save(3, state)
        like = init_state() | {
            "raw_key": jax.random.PRNGKey(0),
            "threefry": jax.random.key(0, impl="threefry2x32"),
            "float32": jnp.zeros(4, dtype=jnp.float32),
            "numpy": np.zeros((2, 3), dtype=np.int16),
            "scalar_step": jnp.asarray(0),
            "flags": (False, 0.0, np.float32(0.0)),
            "name": "kept from like",
        }
        # Non-array leaves (the name, the MLP's activation function) come from `like`.
        assert_bitwise_equal(checkpointer.restore(like), state)


def test_keeps_only_the_last_k_and_saves_every_k(tmp_path):
    state = init_state()
    with Checkpointer(tmp_path, max_to_keep=2, save_every=3) as checkpointer:
        written = [checkpointer.save(step, state) for step in range(10)]
        assert written == [step % 3 == 0 for step in range(10)]
        assert checkpointer.all_steps() == [6, 9]
        assert checkpointer.save(10, state, force=True)  # e.g. the last step of a run
        assert checkpointer.all_steps() == [9, 10]
        assert not checkpointer.save(10, state, force=True)  # already there
        assert not checkpointer.save(7, state, force=True)  # older than the newest
        assert checkpointer.latest_step() == 10
    step_folders = sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit())
    assert step_folders == ["10", "9"]


def test_config_round_trip_and_default_directory(tmp_path):
    config = {"seed": 3, "widths": [4, 4], "lr": 0.01, "method": "etkf"}
    with Checkpointer(tmp_path / "run") as checkpointer:
        checkpointer.save_config(config)
        checkpointer.save(0, init_state())  # config.json beside the steps does not disturb Orbax
        assert checkpointer.load_config() == config
        assert checkpointer.all_steps() == [0]
    assert checkpoint_directory("learn_l96") == checkpoint_directory("learn_l96", "checkpoints")
    assert str(checkpoint_directory("learn_l96")) == "checkpoints/learn_l96"
    with pytest.raises(ValueError, match="run"):
        checkpoint_directory("../elsewhere")


# ------------------------------------------------------------------ errors


def _corrupt_data(step_dir):
    # Flip one byte in the middle of every array-data file.
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))


def _truncate_all(step_dir):
    for path in step_dir.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete_manifest(step_dir):
    shutil.rmtree(step_dir / "manifest")


def _delete_state(step_dir):
    shutil.rmtree(step_dir / "state")


def _state_of_step_1(step_dir):
    # Well-formed arrays of the right shapes, but another step's: only the digests tell.
    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "1" / "state", step_dir / "state")


# Orbax may leave an "event loop is closed" message behind after TensorStore read errors.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "damage", [_corrupt_data, _truncate_all, _delete_manifest, _delete_state, _state_of_step_1]
)
def test_a_damaged_checkpoint_raises_naming_the_folder(tmp_path, damage):
    state = trained_a_little(init_state())
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(1, init_state())
        checkpointer.save(2, state)
    damage(tmp_path / "2")
    with Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(CheckpointError) as error:
            checkpointer.restore(init_state())
        message = str(error.value)
        assert str(tmp_path / "2") in message
        assert "resume from step 1" in message and "without --resume" in message
        # The older, intact step still restores exactly.
        assert_bitwise_equal(checkpointer.restore(init_state(), step=1), init_state())


def test_restoring_into_a_different_state_raises(tmp_path):
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(0, init_state(width=8))
        with pytest.raises(CheckpointError, match=r"\['model'\]\.network\.layers\[0\]\.weight"):
            checkpointer.restore(init_state(width=16))
        with pytest.raises(FileNotFoundError, match="step 5"):
            checkpointer.restore(init_state(), step=5)


def test_resume_without_a_checkpoint_raises_instead_of_starting_afresh(tmp_path):
    missing = tmp_path / "never_written"
    with pytest.raises(FileNotFoundError, match="without --resume") as error:
        resume_or_init(missing, init_state, resume=True)
    assert str(missing) in str(error.value)
    assert not missing.exists()  # nothing created on the way
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        resume_or_init(tmp_path / "empty", init_state, resume=True)


def test_fresh_start_over_an_existing_run_raises(tmp_path):
    assert not has_checkpoint(tmp_path / "never_written") and not has_checkpoint(tmp_path)
    _, _, checkpointer = resume_or_init(tmp_path, init_state, resume=False)
    assert not has_checkpoint(tmp_path)  # config.json only: nothing to resume yet
    checkpointer.save(5, init_state())
    checkpointer.close()
    assert has_checkpoint(tmp_path)
    with pytest.raises(FileExistsError, match="--resume"):
        resume_or_init(tmp_path, init_state, resume=False)


def test_resume_with_other_settings_raises(tmp_path):
    _, _, checkpointer = resume_or_init(tmp_path, init_state, resume=False, config={"seed": 0})
    checkpointer.save(1, init_state())
    checkpointer.close()
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        resume_or_init(tmp_path, init_state, resume=True, config={"seed": 1})


def test_a_run_directory_is_claimed_once_and_resumed_with_the_same_settings(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="Run without --resume"):
        prepare_run_directory(run, {"seed": 0}, resume=True)  # nothing to resume
    assert prepare_run_directory(run, {"seed": 0, "grid": (20, 10)}, resume=False) == run
    (run / "da").mkdir()  # a stage's checkpoints
    with pytest.raises(FileExistsError, match="--resume"):
        prepare_run_directory(run, {"seed": 0, "grid": (20, 10)}, resume=False)
    # Tuples compare as they read back from JSON.
    prepare_run_directory(run, {"seed": 0, "grid": (20, 10)}, resume=True)
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        prepare_run_directory(run, {"seed": 1, "grid": (20, 10)}, resume=True)
    assert (run / "da").is_dir()  # nothing was deleted or overwritten


def test_bad_settings_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
    with pytest.raises(ValueError, match="save_every"):
        Checkpointer(tmp_path, save_every=0)
    with Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(ValueError, match="step"):
            checkpointer.save(-1, init_state())
        with pytest.raises(ValueError, match="no array leaves"):
            checkpointer.save(0, {"name": "nothing to save"})


def test_sharded_arrays_come_back_with_their_sharding(tmp_path):
    mesh = jax.make_mesh((4,), ("members",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))
    ensemble = jax.device_put(jnp.arange(32.0).reshape(8, 4) / 7, sharding)
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(0, {"ensemble": ensemble})
        like = {"ensemble": jax.device_put(jnp.zeros((8, 4)), sharding)}
        restored = checkpointer.restore(like)["ensemble"]
    assert restored.sharding == sharding
    np.testing.assert_array_equal(restored, ensemble)


KILLED_AFTER_SAVE = """
import os, signal, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from hybridda.checkpoint import Checkpointer

checkpointer = Checkpointer(sys.argv[1])
state = {"weights": jnp.arange(1000.0) / 3, "step": 7, "key": jax.random.key(5)}
checkpointer.save(7, state)
os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no atexit: as if the job were killed
"""


def test_a_save_survives_a_kill_right_after_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_SAVE, str(tmp_path)],
        capture_output=True,
        cwd=Path(__file__).parents[1],
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    like = {"weights": jnp.zeros(1000), "step": 0, "key": jax.random.key(0)}
    with Checkpointer(tmp_path) as checkpointer:
        assert checkpointer.all_steps() == [7]
        restored = checkpointer.restore(like)
    expected = {"weights": jnp.arange(1000.0) / 3, "step": 7, "key": jax.random.key(5)}
    assert_bitwise_equal(restored, expected)
