"""GPU majors from /proc/devices, and the names a device denial carries."""

from __future__ import annotations

from enforcer.kernel.devices import device_name, gpu_majors

PROC_DEVICES = """Character devices:
  1 mem
195 nvidia-frontend
226 drm
234 nvidia-uvm
235 nvidia-caps
240 kfd

Block devices:
  8 sd
240 nvidia-not-a-char-device
"""


def test_gpu_majors_are_the_fixed_ones_and_the_drivers_found():
    assert gpu_majors(PROC_DEVICES) == {195: "nvidia-frontend", 226: "drm", 234: "nvidia-uvm", 235: "nvidia-caps",
                                        240: "kfd"}
    assert gpu_majors("") == {195: "nvidia", 226: "drm"}  # before any driver is loaded


def test_a_denied_device_is_named_as_people_know_it():
    drivers = gpu_majors(PROC_DEVICES)
    assert device_name(195, 0, drivers) == ("nvidia-frontend", "/dev/nvidia0")
    assert device_name(195, 255, drivers) == ("nvidia-frontend", "/dev/nvidiactl")
    assert device_name(226, 1, drivers) == ("drm", "/dev/dri/card1")
    assert device_name(226, 129, drivers) == ("drm", "/dev/dri/renderD129")
    assert device_name(234, 0, drivers) == ("nvidia-uvm", "/dev/nvidia-uvm")
    assert device_name(234, 1, drivers) == ("nvidia-uvm", "/dev/nvidia-uvm-tools")
    assert device_name(240, 0, drivers) == ("kfd", "/dev/kfd")
    assert device_name(10, 200, drivers) == ("", "")
