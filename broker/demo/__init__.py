"""Simulated medical device for `broker demo` and the integration tests.

`start_simulated_device` runs an SSH server that behaves like a device's service console:
an interactive shell, single-command exec, SFTP chrooted to the device's file system and
legacy SCP. See `broker.demo.device` (SSH plumbing), `broker.demo.shell` (commands) and
`broker.demo.device_state` (what the device remembers).
"""

from broker.demo.device import SimulatedDevice, start_simulated_device
from broker.demo.device_state import DeviceIdentity, deterministic_bytes

__all__ = ["DeviceIdentity", "SimulatedDevice", "deterministic_bytes", "start_simulated_device"]
