"""Preflight: a known-good submission through the students' sandbox and limits, before any student."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from grader.sandbox import fork_client
from grader.sandbox.client import Sandbox, SandboxError
from grader.sandbox.isolation import Isolation, Limits, choose_level

# Small and built in (the student bundle has no reference solution): one worker start, torch imported,
# a module built and one forward pass, which is everything a student's first request needs.
KNOWN_GOOD = """
import torch
from torch import nn


class Preflight(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1) * 2
"""
ADVICE = ("the sandbox cannot run a known-good submission, so every student would get a grader fault. "
          "Run `vitgrade doctor` to see what fails (README, Troubleshooting); common causes: bubblewrap blocked "
          "by the user-namespace policy (choose another level with --isolation), a rubric memory limit below "
          "what torch needs, a damaged installation")


class GraderBroken(Exception):
    """The grader cannot grade here (its preflight failed, or it faulted on several students in a row)."""


@dataclass
class PreflightResult:
    ok: bool
    seconds: float
    isolation: str
    message: str

    def describe(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        return f"preflight {verdict} in {self.seconds:.1f} s (isolation {self.isolation}): {self.message}"


def preflight(limits: Limits | None = None, isolation: Isolation | None = None) -> PreflightResult:
    """Run the known-good submission with `limits` at `isolation` (default: the best available)."""
    started = time.monotonic()
    try:
        level = choose_level(isolation)
    except RuntimeError as exc:
        return PreflightResult(False, time.monotonic() - started, str(isolation), f"{exc}; {ADVICE}")
    x = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    expected = 2 * np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
    try:
        with Sandbox(KNOWN_GOOD, limits=limits, isolation=level) as sandbox:
            if "Preflight" not in sandbox.start().get("classes", []):
                raise SandboxError("protocol", "the known-good module's class was not found after loading it")
            sandbox.request("build", {"handle": "p", "class": "Preflight"})
            y = sandbox.request("forward", {"handle": "p"}, {"x": x}).arrays.get("y")
            how = started_how(sandbox)
    except SandboxError as error:
        return PreflightResult(False, time.monotonic() - started, level, f"{error.message}; {ADVICE}")
    if y is None or y.shape != expected.shape or not np.allclose(y, expected):
        return PreflightResult(False, time.monotonic() - started, level,
                               f"the known-good module computed a wrong result in the sandbox; {ADVICE}")
    return PreflightResult(True, time.monotonic() - started, level, f"a known-good submission loaded and ran; {how}")


def started_how(sandbox: Sandbox) -> str:
    """How the sandbox's worker started: forked from the fork server, or on its own and why."""
    if sandbox.forked:
        return "its worker was forked from the pre-imported fork server"
    why = fork_client.unavailable().get(sandbox.limits)
    return "its worker started on its own" + (f" (no fork server: {why})" if why else "")


def require_preflight(limits: Limits | None = None, isolation: Isolation | None = None) -> PreflightResult:
    """preflight(), raising GraderBroken (with the sandbox's own error) when it fails."""
    result = preflight(limits, isolation)
    if not result.ok:
        raise GraderBroken(result.describe())
    return result
