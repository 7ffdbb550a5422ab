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


def device_name(major: int, minor: int, drivers: dict[int, str]) -> tuple[str, str]:
    """(driver, node name) of a character device, as a security team reads them:
    ("nvidia", "/dev/nvidia0") rather than 195:0. The name is the driver's usual
    node for that minor (the daemon cannot see the path the sandbox opened);
    "" where there is no usual one."""
    driver = drivers.get(major, "")
    if major == NVIDIA_MAJOR:
        return driver, {255: "/dev/nvidiactl", 254: "/dev/nvidia-modeset"}.get(minor, f"/dev/nvidia{minor}")
    if major == DRM_MAJOR:
        return driver, f"/dev/dri/renderD{minor}" if minor >= 128 else f"/dev/dri/card{minor}"
    if driver == "kfd":
        return driver, "/dev/kfd"
    if driver.startswith("nvidia-"):  # nvidia-uvm (minor 0: /dev/nvidia-uvm, 1: -tools), nvidia-caps, ...
        return driver, f"/dev/{driver}" if minor == 0 else f"/dev/{driver}-tools" if driver == "nvidia-uvm" else ""
    return driver, ""
