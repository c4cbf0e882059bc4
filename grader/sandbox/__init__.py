"""Sandbox: run untrusted student code in an isolated child process and talk to it safely."""

from grader.sandbox.client import Reply, Sandbox, SandboxError
from grader.sandbox.isolation import Isolation, Limits, available_levels, choose_level

__all__ = ["Isolation", "Limits", "Reply", "Sandbox", "SandboxError", "available_levels", "choose_level"]
