"""System information: ``bnbench info`` and provenance must work on a GPU machine too."""

from types import SimpleNamespace

import pytest

from bnbench import sysinfo


@pytest.mark.parametrize("name", ["NVIDIA H100 80GB HBM3", b"NVIDIA H100 80GB HBM3"])
def test_cuda_status_reports_the_device_name_whether_str_or_bytes(name, monkeypatch):
    # numba-cuda 0.30's Device.name is a str; older releases gave bytes. Both name the GPU
    # (before the fix, a str name was reported as "CUDA error: ... no attribute 'decode'").
    cuda = pytest.importorskip("numba.cuda")
    if sysinfo._version("numba-cuda") is None:
        pytest.skip("the cuda extra (numba-cuda) is not installed")
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "get_current_device", lambda: SimpleNamespace(name=name))
    assert sysinfo.cuda_status() == (True, "NVIDIA H100 80GB HBM3")


def test_system_info_is_flat_and_complete():
    info = sysinfo.system_info()
    assert {"numpy", "numba", "cpu", "numba_threads", "cuda_available", "cuda"} <= set(info)
    assert all(not isinstance(v, (dict, list)) for v in info.values())
