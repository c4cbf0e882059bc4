"""Mounted as `__init__.py` over the grader's own packages inside the sandbox, so that importing them
fails plainly instead of yielding an empty namespace package."""

raise ModuleNotFoundError("this package is not available to submissions")
