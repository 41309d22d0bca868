"""``bnbench info`` on a CUDA device: the simulator's device here, a GPU on a GPU machine."""

from bnbench import sysinfo


def test_cuda_status_names_the_device():
    ok, name = sysinfo.cuda_status()
    assert ok, name
    assert isinstance(name, str) and name and not name.startswith("CUDA error")
