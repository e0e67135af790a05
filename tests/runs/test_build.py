"""Config -> the library's objects: the method's policy and its auto T."""

from tadlora.core import topology
from tadlora.runs import config
from tadlora.runs.build import policy


def test_auto_interval_is_the_same_for_every_run_seed():
    # rho belongs to the topology, not to one run's graphs: seeds 0 and 1 used to estimate it on
    # their own graph streams and at p=0.02 landed on either side of a rounding edge (T = 3 or 4).
    def auto(seed):
        cfg = config.load(None, ["method.name=tad", "topology.p=0.02", "topology.rho_samples=200",
                                 f"run.seed={seed}"])
        pol, rho = policy(cfg)
        return pol.interval, rho

    assert auto(0) == auto(1) == auto(7)
    assert auto(0)[1] == topology.process_rho("er", 10, 0.02, samples=200)
