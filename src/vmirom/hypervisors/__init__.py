"""Hypervisor personalities and their registry (`register`, `get`, `names`)."""

from vmirom.hypervisors.base import Personality
from vmirom.hypervisors.registry import ENTRY_POINT_GROUP, UnknownHypervisor, create, get, names, register

__all__ = ["Personality", "register", "get", "names", "create", "UnknownHypervisor", "ENTRY_POINT_GROUP"]
