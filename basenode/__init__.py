"""basenode: PID 1 for containers that need service discovery."""

__version__ = "0.1.0"
