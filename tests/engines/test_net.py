"""A peer's place among the peers, and the backend rule."""

from tadlora.engines.exchange import client_slices
from tadlora.engines.net import Net, backend, mixed_keys


def test_backend_auto_follows_the_device():
    assert backend("auto", "cuda:1") == "nccl" and backend("auto", "cpu") == "gloo"
    assert backend("gloo", "cuda") == "gloo"


def test_net_knows_its_slice_and_caps_payloads():
    net = Net(1, client_slices(10, 3), live=None)
    assert net.world == 3 and net.n == 10 and net.clients == range(4, 7)
    assert net.cap(5) == 4 * 4 * 5 + 4096  # largest slice (4 clients) x width, with slack


def test_mixed_keys_are_in_one_order_on_every_peer():
    fac = {"A": {"q": 0, "v": 0}, "B": {"q": 0, "v": 0}, "head": {"w": 0}}
    assert mixed_keys(fac, frozenset({"head", "B", "A"})) == [
        ("A", "q"), ("A", "v"), ("B", "q"), ("B", "v"), ("head", "w")]
