"""What every check works with: the submission, its sandbox, the rubric, and shared findings."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grader.checks.mapping import Param, Recipe, parse_params
from grader.expected import Expected, default_expected
from grader.intake import Submission
from grader.options import RunOptions
from grader.report import CheckStatus
from grader.rubric import Rubric, Tolerance
from grader.sandbox import Reply, Sandbox, SandboxError


@dataclass
class Outcome:
    """What a check found; the runner adds id, title and points from the rubric."""

    status: CheckStatus
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def passed(cls, message: str = "", **details: Any) -> Outcome:
        return cls("passed", message, details)

    @classmethod
    def failed(cls, message: str, **details: Any) -> Outcome:
        return cls("failed", message, details)

    @classmethod
    def skipped(cls, message: str, **details: Any) -> Outcome:
        return cls("skipped", message, details)


class CheckFailed(Exception):
    """Raised inside a check to end it as failed with a message (e.g. the class is missing)."""


@dataclass
class Built:
    handle: str
    params: list[Param]
    modules: list[dict]
    # "initial", "random:<seed>:<std>", "custom", or "unknown" (a request that changes them failed, or is under
    # way): skips redundant requests.
    weights: str = "initial"
    # While weights == "custom": a copy of each value set_params put in the worker, so it is not sent again.
    held: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def describe_error(error: SandboxError) -> str:
    """A student-facing sentence for an exception raised by their code or a worker failure."""
    if "NotImplementedError" in error.message:
        return "not implemented yet (NotImplementedError)"
    return error.message


@dataclass
class Comparison:
    close: bool
    max_abs: float
    max_rel: float
    tolerance: Tolerance
    message: str = ""

    def as_details(self) -> dict[str, Any]:
        return {"max_abs_error": self.max_abs, "max_rel_error": self.max_rel,
                "rtol": self.tolerance.rtol, "atol": self.tolerance.atol}


# The handout's constructor keywords and the other names textbooks and course revisions give them.
KEYWORD_SYNONYMS = {
    "dim_hidden": ("dim_embed", "embed_dim", "hidden_dim", "dim", "d_model", "hidden_size", "emb_dim"),
    "dim_feedforward": ("mlp_dim", "dim_mlp", "hidden_features", "ffn_dim", "dim_ff", "mlp_hidden_dim"),
    "num_heads": ("heads", "n_heads", "nhead"),
    "num_layers": ("depth", "n_layers"),
    "num_classes": ("n_classes",),
    "img_size": ("image_size",),
    "patch_size": ("patch",),
}


def keyword_renames(keywords: list[str]) -> dict[str, str]:
    """{handout keyword: the class's keyword} for each handout keyword missing with exactly one synonym present."""
    renames = {}
    for name, synonyms in KEYWORD_SYNONYMS.items():
        present = [s for s in synonyms if s in keywords]
        if name not in keywords and len(present) == 1:
            renames[name] = present[0]
    return renames


def probe_shape(class_name: str, args: list, kwargs: dict) -> list[int]:
    """An input shape for one forward that materialises lazy parameters (nn.Lazy*)."""
    if class_name == "ViT":
        size = next((v for k, v in kwargs.items() if k in ("img_size", "image_size")), 32)
        return [1, 3, int(size), int(size)]
    return [1, 5, int(args[0])] if args else []


@dataclass
class WorkerState:
    """How the submission's worker fared: what the runner decides which checks may still run from."""

    load_error: str | None = None  # the submission's code raised while loading (load.definitions says so)
    load_traceback: str = ""
    # The sandbox failed before the code ran (or a restart did): no worker check can reach a verdict.
    grader_fault: str | None = None
    deaths: int = 0  # crashes, timeouts and memory kills so far; grading.MAX_WORKER_DEATHS stops the rest


@dataclass
class Interface:
    """A class's constructor keywords, as the worker reported them."""

    keywords: list[str]
    variadic: bool  # takes **kwargs: every handout keyword may be passed as is
    renames: dict[str, str]  # handout keyword -> the class's synonym for it


@dataclass
class Trial:
    recipe: Recipe
    output: Comparison
    values: dict[str, np.ndarray]
    y: np.ndarray
    weights: Comparison | None = None


@dataclass
class Search:
    """The outcome of trying a component's recipes: the match, or the closest attempt."""

    built: Built
    trials: list[Trial]
    state: dict[str, np.ndarray]
    x: np.ndarray

    @property
    def match(self) -> Trial | None:
        return next((t for t in self.trials if t.output.close), None)

    @property
    def best(self) -> Trial:
        return self.match or min(self.trials, key=lambda t: t.output.max_abs)

    @property
    def recipe(self) -> Recipe:
        return self.best.recipe


@dataclass
class EquivalenceFindings:
    """What the equivalence searches found, kept for the later checks that build on it (gradients, training,
    the layer and ViT checks reuse the components' mappings instead of searching again)."""

    searches: dict[str, Search] = field(default_factory=dict)  # class -> the mapping search at the default sizes
    # class -> what differs at the ALTERNATIVE sizes (None: nothing, or not run yet; a key present means
    # the run started, which also stops a recursion through the layer's own parts).
    alternative_problems: dict[str, str | None] = field(default_factory=dict)
    alternative_recipes: dict[str, Recipe] = field(default_factory=dict)  # class -> the mapping at those sizes
    layer: dict | None = None  # layer_search's result
    vit: dict | None = None  # vit_search's result


@dataclass
class TrainingPictures:
    """What train.accuracy leaves for the report's pictures (the training curve and attention maps)."""

    history: list[dict]
    attention: list[np.ndarray]  # one (B, heads, N, N) array per layer, for the first test images
    images: np.ndarray  # those test images (uint8, NHWC)


class GradingContext:
    """Shared state for one submission's checks. Only the parent holds expected values."""

    def __init__(self, submission: Submission, sandbox: Sandbox, rubric: Rubric, expected: Expected | None = None,
                 options: RunOptions | None = None):
        self.submission = submission
        self.sandbox = sandbox
        self.rubric = rubric
        self.options = options or RunOptions()  # the run's resolved options (accuracy mode, data, device)
        self.classes: list[str] = []
        self.recipes: dict[str, Recipe] = {}
        self.worker = WorkerState()
        self.equivalence = EquivalenceFindings()
        self.training: TrainingPictures | None = None
        # Per-class and per-module answers of the worker that do not change while it lives.
        self._interfaces: dict[str, Interface] = {}
        self._traces: dict[str, list[dict]] = {}
        self._handles = itertools.count()
        self._shared: dict[str, Built] = {}
        self.expected: Expected = expected or default_expected()

    @property
    def precision(self) -> str:
        return self.sandbox.dtype

    @property
    def tolerance(self) -> Tolerance:
        return self.rubric.tolerances[self.precision]

    @property
    def timeout(self) -> float:
        return float(self.rubric.limits["request_timeout"])

    def request(self, op: str, header: dict | None = None, arrays: dict[str, np.ndarray] | None = None) -> Reply:
        return self.sandbox.request(op, header, arrays, timeout=self.timeout)

    def require_class(self, name: str) -> None:
        if name not in self.classes:
            raise CheckFailed(f"class {name} is not defined")

    def shared(self, class_name: str, args: list | None = None, kwargs: dict | None = None) -> Built:
        """A module built once per worker and reused by checks that set the weights they need
        (building the default ViT in float64 is the costliest request)."""
        key = repr((class_name, args, kwargs, self.sandbox.stats.starts))
        if key not in self._shared:
            self._shared[key] = self.build(class_name, args, kwargs)
        return self._shared[key]

    def build(self, class_name: str, args: list | None = None, kwargs: dict | None = None, seed: int = 0) -> Built:
        """Instantiate a student class in the sandbox; a student exception fails the check.

        A keyword the class does not take but names by an unambiguous synonym (`dim_embed` for
        `dim_hidden`) is passed under the student's name: the interface deviation is load.interface's
        to judge, and the math is still graded."""
        self.require_class(class_name)
        handle = f"{class_name}-{next(self._handles)}"
        kwargs = self.renamed_kwargs(class_name, kwargs or {})
        call = f"{class_name}({', '.join([*map(repr, args or []), *(f'{k}={v!r}' for k, v in kwargs.items())])})"
        try:
            reply = self.request("build", {"handle": handle, "class": class_name, "args": args or [],
                                           "kwargs": kwargs, "seed": seed,
                                           "probe_shape": probe_shape(class_name, args or [], kwargs)})
        except SandboxError as error:
            if error.worker_died:
                raise
            raise CheckFailed(f"{call} raised {describe_error(error)}") from None
        return Built(handle, parse_params(reply.header["params"]), reply.header["modules"])

    def renamed_kwargs(self, class_name: str, kwargs: dict) -> dict:
        """`kwargs` with each keyword the class lacks replaced by its synonym in the class's signature."""
        if not kwargs:
            return kwargs
        renames = self.interface(class_name).renames
        return {renames.get(k, k): v for k, v in kwargs.items()}

    def interface(self, class_name: str) -> Interface:
        """The class's constructor keywords and the handout keywords it spells differently (cached)."""
        if class_name not in self._interfaces:
            try:
                reply = self.request("signature", {"class": class_name})
                keywords, variadic = reply.header["keywords"], reply.header["variadic"]
            except SandboxError as error:
                if error.worker_died:
                    raise
                keywords, variadic = [], True  # unknown: pass the handout's keywords and let the build say
            self._interfaces[class_name] = Interface(keywords, variadic, {} if variadic else keyword_renames(keywords))
        return self._interfaces[class_name]

    def attention_layout(self, weights: np.ndarray | None, batch: int, heads: int) -> np.ndarray | None:
        """attn_weights in the handout's (B, heads, N, N) layout. A (heads, B, N, N) array, unambiguous when
        B != heads, is transposed: load.interface alone charges for the layout."""
        if weights is not None and weights.ndim == 4 and batch != heads and weights.shape[:2] == (heads, batch):
            return weights.transpose(1, 0, 2, 3)
        return weights

    def trace(self, built: Built, x: np.ndarray, what: str) -> list[dict]:
        """The calls of one forward that use the module's parameters, in order (see mapping.trace_layout)."""
        if built.handle not in self._traces:
            try:
                self._traces[built.handle] = self.request("trace", {"handle": built.handle}, {"x": x}).header["events"]
            except SandboxError as error:
                if error.worker_died:
                    raise
                raise CheckFailed(f"{what} raised {describe_error(error)}") from None
        return self._traces[built.handle]

    def forward(self, built: Built, x: np.ndarray, what: str, **options: Any) -> Reply:
        """Run forward in the sandbox; a student exception fails the check with `what` in the message."""
        arrays = {"x": x, **options.pop("arrays", {})}
        try:
            return self.request("forward", {"handle": built.handle, **options}, arrays)
        except SandboxError as error:
            if error.worker_died:
                raise
            raise CheckFailed(f"{what} raised {describe_error(error)}") from None

    def set_params(self, built: Built, values: dict[str, np.ndarray]) -> None:
        """Put `values` in the module's parameters. Only values that differ from what the worker holds are sent:
        the mapping searches put the same reference weights in many times, 76 MB for the default ViT in float64."""
        held = built.held if built.weights == "custom" else {}
        changed = {name: value for name, value in values.items() if not _same(held.get(name), value)}
        built.weights, built.held = "custom", {}  # unknown until the worker has answered
        if changed:
            self.request("set_params", {"handle": built.handle}, changed)
        built.held = held | {name: np.array(value) for name, value in changed.items()}

    def randomize(self, built: Built, seed: int, std: float = 0.1) -> None:
        """Seeded random values for every parameter (zero-initialised ones included)."""
        state = f"random:{seed}:{std}"
        if built.weights != state:
            built.weights, built.held = "unknown", {}
            self.request("randomize", {"handle": built.handle, "seed": seed, "std": std})
            built.weights = state

    def compare(self, actual: np.ndarray, expected: np.ndarray) -> Comparison:
        tol = self.tolerance
        if actual.shape != expected.shape:
            return Comparison(False, float("inf"), float("inf"), tol,
                              f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
        if not np.all(np.isfinite(actual)) or not np.all(np.isfinite(expected)):
            return Comparison(False, float("inf"), float("inf"), tol, "output contains NaN or infinity")
        diff = np.abs(actual - expected)
        max_abs = float(diff.max(initial=0.0))
        max_rel = float((diff / np.maximum(np.abs(expected), 1e-12)).max(initial=0.0))
        close = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(expected)))
        return Comparison(close, max_abs, max_rel, tol)


def _same(held: np.ndarray | None, value: np.ndarray) -> bool:
    return held is not None and held.shape == np.shape(value) and held.dtype == np.asarray(value).dtype and \
        np.array_equal(held, value)
