"""Test session: 8 simulated CPU devices (set before jax initialises), strict numpy,
and freed host memory kept for reuse (research/host_memory.py)."""

import os

from tests.devices import xla_flags

os.environ["XLA_FLAGS"] = xla_flags(8, os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402  (must follow XLA_FLAGS)
import pytest  # noqa: E402

from research import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # as research.main does: before JAX starts its threads

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_threefry_partitionable", True)
# One CPU computation at a time: with asynchronous dispatch, eager ops on arrays
# sharded over the 8 simulated devices (a norm of the parameters after a step)
# overlapped in flight and deadlocked in XLA:CPU's collectives, in 2 of 3 CI runs.
jax.config.update("jax_cpu_enable_async_dispatch", False)


SHARED_RUNS = {"tiny_base", "tiny_sft", "tiny_sft_run"}
# Files sent along with them to even out the two workers (none at present: the
# shared-run tests, with the CLI runs on user data, take about as long as the rest).
BALANCE: set[str] = set()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the group markers
def pytest_collection_modifyitems(items):
  """Tests that start from the shared tiny runs go to one xdist worker, so those
  runs are trained once per session (the other worker takes everything else)."""
  for item in items:
    if SHARED_RUNS & set(getattr(item, "fixturenames", ())) or item.path.name in BALANCE:
      item.add_marker(pytest.mark.xdist_group("tiny_runs"))
    elif item.path.name == "test_steps.py":  # its one-device runs are a module fixture
      item.add_marker(pytest.mark.xdist_group("steps"))


@pytest.fixture(scope="session")
def devices():
  devs = jax.devices()
  assert len(devs) == 8, "tests expect 8 simulated CPU devices"
  return devs


def tiny_clm_config():
  """The tiny CLM run (`configs/clm.py:tiny`) that later stages' tests start from,
  on one device, without held-out evaluation or samples."""
  from configs import clm as clm_config  # pylint: disable=g-import-not-at-top
  config = clm_config.get_config("tiny")
  config.mesh.num_devices = 1
  config.train.eval_every = 0
  config.sample.num_samples = 0
  return config


@pytest.fixture(scope="session")
def four_step_clm(tmp_path_factory):
  """A finished 4-step tiny CLM run (`tests.test_loop.tiny_config`, checkpoints at 2
  and 4); tests that rerun or damage a run take a copy (`finished`)."""
  from research.stages import clm  # pylint: disable=g-import-not-at-top
  from tests.test_loop import tiny_config  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("four_step_clm") / "run")
  clm.run(tiny_config(steps=4, checkpoint_every=2), workdir)
  return workdir


@pytest.fixture
def finished(four_step_clm, tmp_path):
  """A copy of `four_step_clm`, this test's to rerun."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(four_step_clm, workdir)
  return workdir


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
  """Workdir of a tiny CLM run (~20 s), shared by the SFT/RM/DPO tests."""
  from research.stages import clm  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("tiny_base"))
  clm.run(tiny_clm_config(), workdir)
  return workdir


@pytest.fixture(scope="session")
def tiny_sft_run(tiny_base, tmp_path_factory):
  """(workdir, summary) of the tiny SFT run from `tiny_base` (~60 s), shared by the
  SFT end-to-end test and the DPO/RLHF tests that start from it."""
  from configs import sft as sft_config  # pylint: disable=g-import-not-at-top
  from research.stages import sft  # pylint: disable=g-import-not-at-top
  config = sft_config.get_config("tiny")
  config.init_from = tiny_base
  config.mesh.num_devices = 1
  workdir = str(tmp_path_factory.mktemp("tiny_sft"))
  return workdir, sft.run(config, workdir)


@pytest.fixture(scope="session")
def tiny_sft(tiny_sft_run):
  return tiny_sft_run[0]
