"""The steps of a round that both engines share: trainable and mixed kinds, the dropout seed."""

from tadlora.core import methods
from tadlora.core.federation import dropout_seed, mixed_kinds, trained_kinds

NONE = frozenset()


def test_head_is_trained_always_and_mixed_when_the_method_communicates():
    tad = methods.make("tad", 1, lambda: 1)
    assert trained_kinds(tad, 1) == {"A", "head"} and mixed_kinds(tad, 1) == {"A", "B", "head"}
    local = methods.make("local", None, lambda: 1)
    assert mixed_kinds(local, 0) == NONE


def test_one_peer_draws_the_simulators_dropout():
    assert dropout_seed(7, 3, 0) == 7 * 1_000_003 + 3  # the in-process engine's seed
    assert dropout_seed(7, 3, 4) != dropout_seed(7, 3, 0)  # a peer starting at client 4
