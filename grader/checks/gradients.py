"""props.gradients: the student's backward pass, checked in the parent against gradients it can trust.

With the reference's weights mapped into the student's ViT (the equivalence mapping), the gradient
of <g, ViT(x)> for a random upstream gradient g must equal the reference's at sampled coordinates of
every mapped weight; only a backward pass that reaches every parameter answers that. The worker
returns raw gradient values and the parent compares: no summary computed in the student's process is
taken for a verdict. Where the ViT cannot be mapped, or computes another function, each parameter's
gradient is checked against finite differences of the student's own forward passes, which the
parent computes from outputs it receives (what it can verify without the reference), and the
message says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grader.checks.context import Built, CheckFailed, GradingContext, Outcome, describe_error
from grader.checks.equivalence import vit_search
from grader.checks.mapping import Recipe
from grader.expected import GRADIENT_SAMPLES, GradientChallenge
from grader.sandbox import Reply, SandboxError
from grader.spec import ALTERNATIVE, DEFAULT, random_input

# Central differences: step and agreement, per precision (float32 rounds at ~1e-7 of the output).
FINITE_DIFFERENCE = {"float64": (1e-6, 1e-4, 1e-9), "float32": (1e-2, 5e-2, 1e-4)}  # step, rtol, atol x |L|
TAIL = "unused or detached parameters do not learn"


@dataclass
class Problem:
    name: str
    what: str  # "missing" | "zero" | "nonfinite" | "differs" | "unused"
    detail: str = ""

    def sentence(self) -> str:
        return {
            "missing": f"no gradient for {self.name}",
            "zero": f"zero gradient for {self.name} although it changes the output (detached?)",
            "nonfinite": f"NaN/inf gradient for {self.name}",
            "differs": f"the gradient of {self.name} is wrong ({self.detail})",
            "unused": f"zero gradient for {self.name}: it does not change the output",
        }[self.what]


def _gradients(ctx: GradingContext, built: Built, x: np.ndarray, upstream: np.ndarray,
               where: dict[str, list[int] | str]) -> Reply:
    try:
        return ctx.request("gradients", {"handle": built.handle, "gradients": where}, {"x": x, "grad_out": upstream})
    except SandboxError as error:
        if error.worker_died:
            raise
        raise CheckFailed(f"ViT forward and backward raised {describe_error(error)}") from None


def _verdict(problems: list[Problem], passed: str, **details) -> Outcome:
    details["problems"] = [p.sentence() for p in problems]
    if problems:
        return Outcome.failed("; ".join(p.sentence() for p in problems[:8]) + f" ({TAIL}; {details['method']})",
                              **details)
    return Outcome.passed(passed, **details)


# -- against the reference ----------------------------------------------------------------------
def _coordinate_ids(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Each reference coordinate numbered 1, 2, ... (as float64, exact below 2**53), and each tensor's offset."""
    ids, offsets, total = {}, {}, 0
    for name, value in state.items():
        offsets[name] = total
        ids[name] = (np.arange(value.size, dtype=np.float64) + total + 1).reshape(value.shape)
        total += value.size
    return ids, offsets


@dataclass
class Target:
    """Coordinates of one student tensor whose gradient is compared, and the reference's gradient there."""

    positions: list[int]  # flat indices into the student's tensor
    expected: np.ndarray
    reference: str  # the reference tensor(s) the coordinates come from


def _targets(challenge: GradientChallenge, placed: dict[str, np.ndarray], offsets: dict[str, int],
             rng: np.random.Generator) -> dict[str, Target]:
    """Sampled coordinates of every student tensor that holds reference weights, with the reference's gradient.

    `placed` holds reference coordinate numbers where the mapping put them. With the reference's whole
    gradient at hand, each student tensor gets its own sample; with recorded samples only (the student
    bundle), the student tensors that hold one of them."""
    order = sorted(offsets, key=offsets.__getitem__)
    starts = np.array([offsets[name] for name in order])
    targets: dict[str, Target] = {}
    if challenge.full is not None:
        for name, where in placed.items():
            flat = np.asarray(where).reshape(-1)
            held = np.flatnonzero(flat)
            if held.size:
                pick = np.sort(rng.choice(held, size=min(GRADIENT_SAMPLES, held.size), replace=False))
                coords = flat[pick].astype(np.int64) - 1
                which = np.searchsorted(starts, coords, side="right") - 1
                expected = np.array([challenge.full[order[w]].reshape(-1)[c - starts[w]]
                                     for w, c in zip(which, coords, strict=True)])
                targets[name] = Target(pick.tolist(), expected, ", ".join(sorted({order[w] for w in which})))
        return targets
    wanted = {offsets[ref] + int(i) + 1: (ref, k) for ref, idx in challenge.samples.items() for k, i in enumerate(idx)}
    wanted_ids = np.sort(np.fromiter(wanted, dtype=np.float64))
    for name, where in placed.items():
        flat = np.asarray(where, dtype=np.float64).reshape(-1)
        nearest = wanted_ids[np.minimum(np.searchsorted(wanted_ids, flat), wanted_ids.size - 1)]
        positions = np.flatnonzero(nearest == flat)
        if positions.size:
            refs = [wanted[int(flat[p])] for p in positions]
            targets[name] = Target(positions.tolist(), np.array([challenge.gradients[r][k] for r, k in refs]),
                                   ", ".join(sorted({r for r, _ in refs})))
    return targets


def _against_reference(ctx: GradingContext, built: Built, recipe: Recipe,
                       challenge: GradientChallenge) -> Outcome | str:
    """The verdict, or why the reference's gradients do not apply (then finite differences decide)."""
    state = ctx.expected.weights("ViT")
    values = recipe.make(state)
    shapes = {p.name: p.shape for p in built.params}
    if not set(values) <= set(shapes):
        return "the weight mapping does not fit the ViT's parameters"
    # The mapping moves values without arithmetic, so moving coordinate numbers says where each went.
    ids, offsets = _coordinate_ids(state)
    placed = recipe.make(ids)
    rng = np.random.default_rng(ctx.expected.seeds["ViT"] + 300)
    targets = _targets(challenge, placed, offsets, rng)
    # Parameters the mapping leaves out, or fills with zeros (a bias the reference lacks), and tensors
    # no recorded sample falls in are checked by finite differences, at values the parent knows.
    extra = sorted(set(shapes) - set(values))
    values |= {name: 0.1 * rng.standard_normal(shapes[name]) for name in extra}
    unmapped = sorted(set(shapes) - set(targets))
    ctx.set_params(built, values)
    where = {name: target.positions for name, target in targets.items()} | dict.fromkeys(unmapped, "all")
    reply = _gradients(ctx, built, challenge.images, challenge.upstream, where)
    if not ctx.compare(reply.arrays["y"], challenge.logits).close:
        return "the ViT computes another function than the reference (see equiv.vit)"

    missing = set(reply.header.get("no_gradient", []))
    problems = [Problem(name, "missing") for name in sorted(missing)]
    for name, target in sorted(targets.items()):
        got = reply.arrays.get(f"grad:{name}")
        if name in missing:
            continue
        if got is None or got.shape != (len(target.positions),):
            problems.append(Problem(name, "missing"))
            continue
        problems += _compare(ctx, name, got, target.expected, target.reference)
    unmapped = [name for name in unmapped if name not in missing]
    if unmapped:
        grads = {name: reply.arrays.get(f"grad:{name}") for name in unmapped}
        problems += _finite_differences(ctx, built, values, challenge.images, challenge.upstream, grads, rng)
    method = ("compared with the reference's gradients for a random upstream gradient, with the reference's weights "
              "mapped into your ViT" + (f"; {', '.join(unmapped)} by finite differences" if unmapped else ""))
    # The counts stay in the details: the bundle's recorded samples and the instructor's reference differ in them.
    return _verdict(problems, "every parameter's gradient matches the reference's (its weights mapped into your ViT, "
                              "a random upstream gradient)", method=method, mapping=recipe.description,
                    challenge=ctx.expected.challenge, coordinates_compared=sum(len(t.positions) for t in targets.values()),
                    tensors_compared=len(targets), by_finite_differences=unmapped)


def _compare(ctx: GradingContext, name: str, got: np.ndarray, expected: np.ndarray, ref: str) -> list[Problem]:
    if not np.all(np.isfinite(got)):
        return [Problem(name, "nonfinite")]
    if not np.any(got) and np.any(expected):
        return [Problem(name, "zero")]
    tol = ctx.tolerance
    scale = float(np.abs(expected).max(initial=0.0))
    diff = np.abs(got - expected)
    if np.all(diff <= tol.atol + tol.rtol * (np.abs(expected) + scale)):
        return []
    label = name if name == ref else f"{name}, the reference's {ref}"
    return [Problem(label, "differs", f"max error {float(diff.max()):.3g} against the reference's gradient "
                                      f"of size {scale:.3g}")]


# -- against finite differences of the student's own forward -------------------------------------
def _finite_differences(ctx: GradingContext, built: Built, values: dict[str, np.ndarray], x: np.ndarray,
                        upstream: np.ndarray, grads: dict[str, np.ndarray | None],
                        rng: np.random.Generator) -> list[Problem]:
    """For each named parameter p: <grad_p, D> against (L(p + hD) - L(p - hD)) / 2h, L = <upstream, ViT(x)>."""
    step, rtol, atol = FINITE_DIFFERENCE[ctx.precision]

    def loss(name: str, value: np.ndarray) -> float:
        ctx.set_params(built, {name: value})
        return float(np.sum(upstream * ctx.forward(built, x, "ViT forward").arrays["y"]))

    base = loss(next(iter(grads)), values[next(iter(grads))]) if grads else 0.0
    problems = []
    for name, grad in grads.items():
        if grad is None:
            problems.append(Problem(name, "missing"))
            continue
        direction = rng.standard_normal(values[name].shape)
        if not np.all(np.isfinite(grad)):
            problems.append(Problem(name, "nonfinite"))
            continue
        slope = float(np.sum(grad.reshape(direction.shape) * direction))
        numeric = (loss(name, values[name] + step * direction) - loss(name, values[name] - step * direction)) / (2 * step)
        ctx.set_params(built, {name: values[name]})
        tolerance = rtol * max(abs(slope), abs(numeric)) + atol * (1 + abs(base))
        if not np.isfinite(numeric):
            problems.append(Problem(name, "nonfinite"))
        elif abs(numeric) <= atol * (1 + abs(base)) and abs(slope) <= atol * (1 + abs(base)):
            problems.append(Problem(name, "unused"))
        elif abs(slope - numeric) > tolerance:
            what = "zero" if slope == 0 else "differs"
            problems.append(Problem(name, what, f"directional derivative {slope:.6g}, finite differences of your "
                                                f"forward {numeric:.6g}"))
    return problems


def _against_own_forward(ctx: GradingContext, reason: str) -> Outcome:
    config = ALTERNATIVE  # small: one pair of forwards per parameter tensor stays cheap
    built = ctx.shared("ViT", kwargs=config.kwargs())
    rng = np.random.default_rng(ctx.expected.seeds["ViT"] + 400)
    values = {p.name: 0.1 * rng.standard_normal(p.shape) for p in built.params}
    if not values:
        raise CheckFailed("the ViT has no parameters, so nothing can learn")
    x = random_input("ViT", config, batch=2, seed=int(rng.integers(1 << 31)))
    upstream = rng.standard_normal((2, config.num_classes))
    ctx.set_params(built, values)
    reply = _gradients(ctx, built, x, upstream, dict.fromkeys(values, "all"))
    if reply.arrays["y"].shape != upstream.shape:
        raise CheckFailed(f"ViT(**{config.kwargs()}) output {reply.arrays['y'].shape} != expected {upstream.shape}")
    grads = {name: None if name in reply.header.get("no_gradient", []) else reply.arrays.get(f"grad:{name}")
             for name in values}
    problems = _finite_differences(ctx, built, values, x, upstream, grads, rng)
    method = f"checked against finite differences of your own forward passes, because {reason}"
    return _verdict(problems, f"all {len(values)} parameters receive the gradient their effect on the output implies "
                              f"({method})", method=method)


def check_gradients(ctx: GradingContext) -> Outcome:
    challenge = ctx.expected.gradient_challenge()
    if challenge is None:
        return _against_own_forward(ctx, "these expected values carry no reference gradients")
    try:
        recipe = vit_search(ctx)["recipe"]
    except CheckFailed as failure:
        return _against_own_forward(ctx, f"the reference's weights cannot be mapped into your ViT ({failure})")
    built = ctx.shared("ViT", kwargs=DEFAULT.kwargs())  # the model the mapping was made for
    verdict = _against_reference(ctx, built, recipe, challenge)
    return verdict if isinstance(verdict, Outcome) else _against_own_forward(ctx, verdict)
