"""torch's thread count per batch (tasks/intraop.py), on the real torch."""

import pytest
import torch

from tasks.intraop import IntraOpThreads


@pytest.fixture
def pool_of_two():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield IntraOpThreads(small_batch_s=0.005)
    torch.set_num_threads(before)


def test_a_small_cpu_batch_runs_on_one_thread_and_a_large_one_on_the_pool(pool_of_two):
    threads = pool_of_two
    assert threads.for_batch(torch.device("cpu"), 0.001) == 1 and torch.get_num_threads() == 1
    assert threads.for_batch(torch.device("cpu"), 0.020) == 2 and torch.get_num_threads() == 2
    threads.for_batch(torch.device("cpu"), 0.001)
    threads.whole_pool()  # before a calibration
    assert torch.get_num_threads() == 2


def test_a_gpu_batch_or_a_pool_of_one_changes_nothing(pool_of_two):
    assert pool_of_two.for_batch(torch.device("cuda", 0), 0.001) == 0 and torch.get_num_threads() == 2
    assert pool_of_two.for_batch(None, 0.001) == 0  # a runner that is not torch's
    torch.set_num_threads(1)  # OMP_NUM_THREADS=1: the user chose one thread
    single = IntraOpThreads()
    assert single.for_batch(torch.device("cpu"), 1.0) == 0 and torch.get_num_threads() == 1
