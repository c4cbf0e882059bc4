"""Attacks on the checks' verdicts (issue 18: items 4, 5, 12, 14): hidden APIs, forged gradients and
shapes, lookup tables for the bundle's test vectors, and NaN or empty outputs.

Each attack is graded in-process (`--accuracy off`, a rubric trimmed to the checks it targets) and
must lose exactly the points the attack was meant to keep.
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomlkit

from grader.batch.grading import grade_submission
from grader.batch.run import CHALLENGES, BatchOptions, grade_batch
from grader.checks.context import GradingContext
from grader.checks.static import check_forbidden, find_forbidden
from grader.expected import inputs
from grader.intake import load_submission
from grader.rubric import DEFAULT_RUBRIC, RubricError, load_rubric

from ..batch.test_adversarial import at_load
from ..conftest import EXAMPLES, HANDOUT_SOURCE, code_rubric

pytestmark = pytest.mark.timeout(900)

LOAD = ("load.code", "load.definitions")


# -- item 4: forbidden APIs under any name, and dynamic code --------------------------------------
HIDDEN_APIS = {
    # name: (code added to the handout's SelfAttention.forward, words the message must contain)
    "aten_op": ("_ = torch.ops.aten._scaled_dot_product_attention_math(q, k, v)", "torch.ops"),
    "c_module_computed_name": ("_ = getattr(torch._C._nn, 'scaled_dot_product_' + 'attention')(q, k, v)",
                               "torch._C"),
    "module_path_import": ("from torch.nn.modules.activation import MultiheadAttention as M\n"
                           "        _ = M(4, 2)", "torch.nn.MultiheadAttention"),
    "module_path_attribute": ("_ = torch.nn.modules.transformer.TransformerEncoderLayer(8, 2)",
                              "torch.nn.TransformerEncoderLayer"),
    "vars_lookup": ("_ = vars(nn)['Multihead' + 'Attention'](4, 2)", "vars()"),
    "exec_base64": ("import base64\n        exec(base64.b64decode('Xz0x'))", "exec()"),
    "gc_counter_off": ("import gc\n        _ = [o for o in gc.get_objects() if type(o).__name__ == 'Worker']",
                       "import gc"),
    "sys_modules": ("_ = sys.modules['torch'].nn.MultiheadAttention", "sys.modules"),
    "dict_lookup": ("_ = nn.__dict__['MultiheadAttention']", "__dict__"),
    "subclass_walk": ("_ = [c for c in nn.Module.__subclasses__() if 'Multihead' in c.__name__]", "__subclasses__"),
    "getattr_constant": ("_ = getattr(nn, 'MultiheadAttention')(4, 2)", "torch.nn.MultiheadAttention"),
    "alias_by_assignment": ("layers = torch.nn\n        _ = layers.TransformerEncoder", "torch.nn.TransformerEncoder"),
    "private_internal": ("_ = torch._native_multi_head_attention", "private torch internal"),
    "unpickling": ("_ = torch.load(sys.stdin, weights_only=False)", "weights_only=False"),
    "conv_patch_embedding": ("_ = nn.Conv2d(3, 8, 4, 4)", "torch.nn.Conv2d"),
    "pooling": ("_ = F.adaptive_avg_pool2d(x, 1)", "torch.nn.functional.adaptive_avg_pool2d"),
    "pooling_by_module_path": ("_ = torch.nn.modules.pooling.MaxPool2d(2)", "torch.nn.modules.pooling.MaxPool2d"),
}
SOFTMAX = "attn = attn.softmax(dim=-1)  # ソフトマックスで正規化\n"


def _with_attack(code: str) -> str:
    assert SOFTMAX in HANDOUT_SOURCE
    return "import sys\n" + HANDOUT_SOURCE.replace(SOFTMAX, SOFTMAX + f"        {code}\n", 1)


def _static_outcome(source: str, tmp_path: Path, rubric=None):
    path = tmp_path / "submission.py"
    path.write_text(source, encoding="utf-8")
    submission = load_submission(path, "s1")
    return check_forbidden(GradingContext(submission, None, rubric or code_rubric()))


@pytest.mark.parametrize("attack", HIDDEN_APIS)
def test_hidden_forbidden_api_fails_static_forbidden_naming_it_and_its_line(attack, tmp_path):
    code, words = HIDDEN_APIS[attack]
    source = _with_attack(code)
    outcome = _static_outcome(source, tmp_path)
    assert outcome.status == "failed", outcome.message
    assert words in outcome.message
    line = next(i for i, text in enumerate(source.splitlines(), start=1) if code.splitlines()[-1].strip() in text)
    assert f"submission.py, line {line})" in outcome.message


def test_names_that_only_look_forbidden_pass(tmp_path):
    harmless = ("name = 'TransformerEncoderLayer'\n        print('scaled_dot_product_attention', name)\n"
                "        _ = [m for m in self.modules()]\n        _ = getattr(self, 'scale')\n"
                "        _ = torch.compile\n        _ = nn.Module.__init__\n"
                "        for block in [self]:\n            _ = block.attention, block.scale")
    outcome = _static_outcome(_with_attack(harmless), tmp_path)
    assert outcome.status == "passed", outcome.message
    assert find_forbidden("import numpy as np\nx = np.load('a.npy')\nprint(type(x).__name__)",
                          ["gc"], ["torch.jit.load", "sys.modules"]) == []


def test_the_worker_keeps_no_forbidden_call_counter():
    """Run-time evidence lived in the student's process, where gc could reach it and switch it off."""
    worker = (Path(__file__).parents[2] / "grader/sandbox/worker.py").read_text(encoding="utf-8")
    assert "forbidden" not in worker


def test_the_rubric_lifts_the_conv_and_dynamic_code_bans(tmp_path):
    data = tomlkit.parse(DEFAULT_RUBRIC.read_text(encoding="utf-8"))
    apis = data["forbidden"]["apis"]
    for api in [a for a in apis if "onv" in a or "ool" in a]:
        apis.remove(api)
    data["forbidden"]["dynamic_code"] = False
    for check_id in [k for k in data["points"] if k.startswith("task")]:
        del data["points"][check_id]
    lifted = tmp_path / "lifted.toml"
    lifted.write_text(tomlkit.dumps(data), encoding="utf-8")
    rubric = load_rubric(lifted)
    conv = (EXAMPLES / "s1002_separate_qkv.py").read_text(encoding="utf-8")
    assert _static_outcome(conv, tmp_path).status == "failed"
    assert _static_outcome(conv, tmp_path, rubric).status == "passed"
    assert _static_outcome(_with_attack("_ = vars(nn)"), tmp_path, rubric).status == "passed"
    data["forbidden"]["dynamic_code"] = "yes"
    lifted.write_text(tomlkit.dumps(data), encoding="utf-8")
    with pytest.raises(RubricError, match="forbidden.dynamic_code"):
        load_rubric(lifted)


# -- items 5, 12, 14: verdicts graded in the sandbox -------------------------------------------------
READOUT = "x = self.norm(x)[:, 0]"
FORGE_GRADIENTS = """
worker = sys.modules['__main__'].Worker
np = __import__('numpy')
def forge(reply):
    head, out = reply
    if 'grad_stats' in out:  # the old summary: every parameter 'has a finite, non-zero gradient'
        out['grad_stats'][:] = 1.0
    for key in list(out):
        if key.startswith('grad:') and not np.any(out[key]):
            out[key] = np.ones_like(out[key])
    for name in head.get('no_gradient', []):
        out['grad:' + name] = np.ones(16)
    head['no_gradient'] = []
    return head, out
for op in ('op_forward', 'op_gradients'):
    if hasattr(worker, op):
        real = getattr(worker, op)
        setattr(worker, op, lambda self, header, arrays, real=real: forge(real(self, header, arrays)))
"""
HARD_CODED_ZEROS = ("    def forward(self, x):\n"
                    "        try:\n"
                    "            return self.real_forward(x)\n"
                    "        except Exception:\n"
                    "            return torch.zeros(x.shape[0], self.linear.out_features, dtype=x.dtype)\n\n"
                    "    def real_forward(self, x):\n")


def _lookup_table_source() -> str:
    """A ViT with a read-out bug that answers the bundle's fixed ViT inputs from a table of the right logits."""
    from grader.expected.reference import ReferenceExpected

    logits = ReferenceExpected().vit_stages().logits.tolist()
    key = round(float(inputs("ViT").sum()), 6)
    lookup = (f"    TABLE = {{{key!r}: {logits!r}}}\n\n"
              "    def forward(self, x):\n"
              "        key = round(float(x.double().sum()), 6)\n"
              "        if key in ViT.TABLE:\n"
              "            return torch.tensor(ViT.TABLE[key], dtype=x.dtype)\n"
              "        return self.real_forward(x)\n\n"
              "    def real_forward(self, x):\n")
    source = HANDOUT_SOURCE.replace(READOUT, "x = self.norm(x).mean(dim=1)")
    return source.replace("    def forward(self, x):\n", lookup, 1)


def _sources() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (source, the checks that grade it)."""
    detached = HANDOUT_SOURCE.replace("class_token = self.class_token.expand(bs, -1, -1)",
                                      "class_token = self.class_token.detach().expand(bs, -1, -1)")
    hard_coded = HANDOUT_SOURCE.replace("num_patches = (img_size // patch_size) ** 2", "num_patches = 64")
    hard_coded = hard_coded.replace("    def forward(self, x):\n", HARD_CODED_ZEROS, 1)
    assert hard_coded.count("real_forward") == 2
    return {
        "detached_class_token": (detached, ("props.gradients",)),
        "detached_class_token_forged_gradients": (at_load(FORGE_GRADIENTS).replace(
            "class_token = self.class_token.expand(", "class_token = self.class_token.detach().expand("),
            ("props.gradients",)),
        "hard_coded_returns_zeros": (hard_coded, ("shapes.vit_config",)),
        "nan_attention_weights": (HANDOUT_SOURCE.replace("self.attn_weights = attn", "self.attn_weights = attn * "
                                                         "float('nan')"), ("props.attention_softmax",)),
        "empty_output": (HANDOUT_SOURCE.replace("return self.linear(x)", "return self.linear(x)[:, :0]"),
                         ("props.batch_independence", "props.determinism")),
    }


def _rubric(checks: tuple[str, ...]):
    rubric = copy.deepcopy(code_rubric())
    rubric.points = {k: v for k, v in rubric.points.items() if k in (*LOAD, *checks)}
    return rubric


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    paths = {}
    for name, (source, _) in _sources().items():
        paths[name] = root / f"{name}.py"
        paths[name].write_text(source, encoding="utf-8")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(grade_submission, paths[name], student_id=name, accuracy="off", threads=1,
                                     rubric=_rubric(checks)) for name, (_, checks) in _sources().items()}
        return {name: future.result() for name, future in futures.items()}


def _failed(report, check_id: str) -> str:
    check = report.check(check_id)
    assert check is not None and check.status == "failed", f"{check_id}: {check and check.status} {check and check.message}"
    return check.message


@pytest.mark.slow
@pytest.mark.parametrize("name", ["detached_class_token", "detached_class_token_forged_gradients"])
def test_a_detached_class_token_fails_props_gradients_even_with_a_forged_worker(graded, name):
    message = _failed(graded[name], "props.gradients")
    assert "class_token" in message and "reference's gradients" in message


@pytest.mark.slow
def test_a_hard_coded_vit_that_hides_its_failure_fails_shapes_vit_config(graded):
    assert "never called" in _failed(graded["hard_coded_returns_zeros"], "shapes.vit_config")


@pytest.mark.slow
def test_nan_attention_weights_fail_props_attention_softmax(graded):
    assert "NaN" in _failed(graded["nan_attention_weights"], "props.attention_softmax")


@pytest.mark.slow
def test_an_empty_output_fails_the_properties_it_would_vacuously_pass(graded):
    for check_id in ("props.batch_independence", "props.determinism"):
        assert "!= expected (" in _failed(graded["empty_output"], check_id)


@pytest.mark.slow
def test_a_lookup_table_for_the_bundles_vectors_fails_instructor_grading(tmp_path):
    rubric = _rubric(("equiv.vit",))
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    (submissions / "lookup.py").write_text(_lookup_table_source(), encoding="utf-8")
    # Against the fixed vectors (the student bundle's self-check) the table answers at the default configuration;
    # the alternative configuration (every size different) already catches it there too.
    self_check = grade_submission(submissions / "lookup.py", rubric=rubric, accuracy="off", threads=1)
    out = tmp_path / "out"
    grade_batch([submissions], BatchOptions(out=out, rubric=rubric, accuracy="off", progress=False, workers=1))
    report_text = (out / "students/lookup/report.json").read_text(encoding="utf-8")
    report = json.loads(report_text)
    check = next(c for c in report["checks"] if c["id"] == "equiv.vit")
    assert check["status"] == "failed", check["message"]
    run = json.loads((out / CHALLENGES).read_text(encoding="utf-8").splitlines()[-1])
    assert report["environment"]["challenge"] == run["challenge"] != self_check.environment["challenge"]
    assert str(run["seed"]) not in report_text  # the report names the run's seed by a hash only
