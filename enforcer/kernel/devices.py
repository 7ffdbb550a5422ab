"""Which character-device majors are GPUs on this host.

NVIDIA's main nodes (/dev/nvidia0.., /dev/nvidiactl) and DRM (/dev/dri/card*,
/dev/dri/renderD*) have fixed majors. nvidia-uvm, nvidia-caps, nvidia-modeset
and AMD's /dev/kfd get dynamic majors, named in /proc/devices once their driver
is loaded. The fixed ones are always marked, so a sandbox is refused a GPU node
even if it creates one (mknod) before the driver shows up.
"""

from __future__ import annotations

from pathlib import Path

PROC_DEVICES = Path("/proc/devices")

NVIDIA_MAJOR = 195
DRM_MAJOR = 226
FIXED_GPU_MAJORS = {NVIDIA_MAJOR: "nvidia", DRM_MAJOR: "drm"}

# Driver names in /proc/devices whose character majors are GPU interfaces.
GPU_DRIVER_PREFIXES = ("nvidia", "drm", "kfd", "dxg")


def gpu_majors(proc_devices: str | None = None) -> dict[int, str]:
    """Major -> driver name, the fixed majors included."""
    if proc_devices is None:
        try:
            proc_devices = PROC_DEVICES.read_text()
        except OSError:
            proc_devices = ""
    found = dict(FIXED_GPU_MAJORS)
    in_char_section = False
    for line in proc_devices.splitlines():
        if line.strip() == "Character devices:":
            in_char_section = True
            continue
        if line.strip() == "Block devices:":
            in_char_section = False
            continue
        parts = line.split()
        if in_char_section and len(parts) == 2 and parts[0].isdigit() and parts[1].startswith(GPU_DRIVER_PREFIXES):
            found[int(parts[0])] = parts[1]
    return found
