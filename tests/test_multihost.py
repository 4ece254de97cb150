"""jaxpoison.multihost in one process: how a launch is resolved from flags and the environment,
and that the agreement helpers are the identity for a single process. Real two-process runs of
scripts/certify.py are in tests/test_certify_script.py."""

import numpy as np
import pytest

from jaxpoison import multihost

ENV = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
       "JAX_PROCESS_ID": "3"}


def test_flags_override_environment_which_fills_the_rest():
  assert multihost.resolve_launch(environ=ENV) == multihost.Launch("10.0.0.1:1234", 4, 3)
  assert multihost.resolve_launch("h:99", None, 0, environ=ENV, timeout_s=5) == (
      multihost.Launch("h:99", 4, 0, 5.0))
  assert multihost.resolve_launch("[::1]:99", 2, 1, environ={}).coordinator_address == "[::1]:99"


def test_nothing_set_is_left_to_cluster_detection():
  # Slurm, Open MPI, Kubernetes or Cloud TPU fill what stays None inside jax.distributed.
  assert multihost.resolve_launch(environ={"SLURM_JOB_ID": "7"}) == multihost.Launch()


@pytest.mark.parametrize("kwargs, environ, message", [
    ({"process_id": 2, "num_processes": 2}, {}, "process id 2 with 2 processes"),
    ({"num_processes": 0}, {}, "expected at least 1, got 0"),
    ({"process_id": -1}, {}, "expected 0 or more, got -1"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two': expected int"),
    ({}, {"JAX_PROCESS_ID": "4", "JAX_NUM_PROCESSES": "4"}, "process id 4 with 4 processes"),
    ({"coordinator_address": "10.0.0.1"}, {}, "expected HOST:PORT"),
    ({"coordinator_address": "10.0.0.1:99999"}, {}, "expected HOST:PORT"),
    ({"timeout_s": 0}, {}, "expected a positive number of seconds"),
])
def test_bad_combinations_are_refused(kwargs, environ, message):
  with pytest.raises(multihost.LaunchError, match=message.replace("(", r"\(")):
    multihost.resolve_launch(environ=environ, **kwargs)


def test_single_process_helpers_are_the_identity():
  done = np.array([1, 0, 1], np.uint8)
  np.testing.assert_array_equal(multihost.broadcast_from_writer(done), done)
  assert multihost.is_writer()
  assert multihost.run_on_writer(lambda: 7) == 7
  with pytest.raises(KeyError):
    multihost.run_on_writer(lambda: {}["missing"])
  multihost.check_same_everywhere("settings", {"a": 1})
