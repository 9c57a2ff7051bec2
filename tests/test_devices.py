"""Device choice, with the CUDA device count faked at the torch.cuda boundary: each xdist worker
gets a GPU of its own, and more workers than GPUs is refused unless sharing is asked for."""

import pytest

from pytest_sdopt.measure.devices import resolve_device, xdist_worker
from pytest_sdopt.core.errors import SdoptUsageError


class FakeCuda:
    def __init__(self, count):
        self.count = count

    def is_available(self):
        return self.count > 0

    def device_count(self):
        return self.count

    def current_device(self):
        return 0


@pytest.mark.parametrize("worker, workers, gpus, expected", [
    ("gw0", "2", 2, "cuda:0"), ("gw1", "2", 2, "cuda:1"), ("gw3", "4", 8, "cuda:3"),
    ("gw0", "1", 4, "cuda:0"),  # -n 1: one worker, the current device, as without xdist
    (None, None, 4, "cuda:0"),  # no xdist
])
def test_each_xdist_worker_is_pinned_to_its_own_gpu(monkeypatch, worker, workers, gpus, expected):
    # Faked at both boundaries: xdist's environment variables and torch.cuda's device count.
    for name, value in (("PYTEST_XDIST_WORKER", worker), ("PYTEST_XDIST_WORKER_COUNT", workers)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    for requested in ("auto", "cuda"):  # auto and a bare cuda pin alike
        assert str(resolve_device(requested, xdist_worker(), cuda=FakeCuda(gpus))) == expected, requested


def test_workers_on_as_many_gpus_never_share_one(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    devices = []
    for index in range(4):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        devices.append(str(resolve_device("auto", xdist_worker(), cuda=FakeCuda(4))))
    assert devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_more_workers_than_gpus_is_refused_unless_sharing_is_asked_for():
    with pytest.raises(SdoptUsageError, match=r"pytest -n 3 started 3 workers but this machine has 2 CUDA device\(s\)"
                                              r".*Use -n 2, or --sdopt-share-gpus"):
        resolve_device("auto", (2, 3), cuda=FakeCuda(2))
    assert str(resolve_device("auto", (2, 3), share_gpus=True, cuda=FakeCuda(2))) == "cuda:0"


def test_an_explicit_device_is_the_users_choice_and_cpu_stays_cpu():
    assert str(resolve_device("cuda:1", (0, 2), cuda=FakeCuda(2))) == "cuda:1"
    assert str(resolve_device("auto", (1, 2), cuda=FakeCuda(0))) == "cpu"
    assert str(resolve_device("cpu", (1, 2), cuda=FakeCuda(4))) == "cpu"


def test_the_worker_is_read_from_xdists_environment(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    assert xdist_worker() == (3, 4)
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert xdist_worker() is None
