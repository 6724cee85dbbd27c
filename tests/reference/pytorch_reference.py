#!/usr/bin/env python3
"""An independent PyTorch implementation of M0, M1 and the Transformer LM, in float64.

It checks diagc's CPU reference interpreter (src/backend/cpu/interp.rs) against PyTorch on fixed
inputs and weights, and writes the fixtures that `tests/reference.rs` reads, so that the Rust test
suite itself needs no PyTorch.

Usage (from the repository root; needs `torch`, CPU is enough; CI does not run this script).
`pip install torch` works (on Linux PyPI's wheel also pulls the CUDA runtime packages, a few GB,
which are loaded but never used here); the committed fixtures were made with torch 2.15.0.

    cargo build --release
    # One record: recompute it in PyTorch, print the largest difference from diagc's numbers,
    # and write a fixture.
    ./target/release/diagc run stdlib/attention/m1.diag --size tok=5 --size dm=8 --size head=2 \
        --seed 1 --save /tmp/m1.record.json
    python3 tests/reference/pytorch_reference.py /tmp/m1.record.json -o tests/reference/m1.json

    # Regenerate every committed fixture (runs ./target/release/diagc itself):
    python3 tests/reference/pytorch_reference.py --all [--diagc PATH]

What is compared: the outputs, and the gradient of the SUM of all outputs with respect to every
value input (data inputs and every parameter tensor), as `diagc run --save` records them. Records
must be in eval mode (no `--train`): dropout is then the identity.

The math is written from the protocol (docs/experiment.md and the stdlib sources' comments), not
from diagc's IR:

* `linear[a -> b]`: y = x @ W + b with W stored [in, out] (torch's nn.Linear stores [out, in]);
  when input and output axis coincide the input side is the primed axis (`dm'`).
* `split[dm -> head, dk]`: the row-major view `.view(T, h, dk)`; `merge` is its inverse.
* M1: per head softmax(q k^T / sqrt(dk) + causal mask) v (torch's scaled_dot_product_attention).
* M0: per head, phi = elu + 1 on q and k, out_i = phi(q_i) S_i / (phi(q_i) . z_i + 1e-6),
  S_i = sum_{j<=i} phi(k_j) v_j^T, z_i = sum_{j<=i} phi(k_j).
* LM: h0 = embed(ids) * sqrt(dm) + PE, PE(p, 2i) = sin(p / 10000^(2i/dm)), PE(p, 2i+1) = cos(same);
  post-LN blocks y = LN(x + attn(x)), LN(y + FFN(y)), FFN = Linear(dm, dff) -> ReLU ->
  Linear(dff, dm); LayerNorm eps 1e-5 with gain and bias; logits = Linear(dm, vocab)(h_L).

Parameters are taken in the record's order (order of first use) and each is checked by its name
suffix (`.weight`, `.bias`, `.gain`, `.table`, and the box kind: `linear`, `layernorm`, `embed`).

LayerNorm parameters: diagc initialises every gain to exactly 1 and every bias to exactly 0, which
would let a forward pass that ignores them, or confuses one with the other, pass unnoticed. Unless
`--keep-ln` is given, the fixture therefore replaces them with fixed, non-trivial values (a
deterministic formula, below) before PyTorch computes its outputs and gradients; the sanity check
against diagc's own numbers is done on the record's inputs before that replacement.

A fixture holds: source, diagram, hypers, seed, train, torch_version, sizes (as recorded),
inputs (as recorded, LayerNorm parameters replaced as above), and PyTorch's outputs and gradients,
each tensor `{name, axes, shape, data}` with data row-major in `axes` order, the gradients in the
same axes as their inputs; plus `ln_perturbed` (the replaced names) and `diagc_record_max_abs_diff`.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# The committed fixtures: name, file, diagram, hypers, sizes.
FIXTURES = [
    ("m1", "stdlib/attention/m1.diag", "m1", {}, {"tok": 5, "dm": 8, "head": 2}),
    ("m0", "stdlib/attention/m0.diag", "m0", {}, {"tok": 5, "dm": 8, "head": 2}),
    (
        "lm_m1",
        "stdlib/lm.diag",
        "lm",
        {"layers": 1, "mech": "m1"},
        {"tok": 6, "dm": 8, "head": 2, "dff": 16, "vocab": 13},
    ),
    (
        "lm_m0",
        "stdlib/lm.diag",
        "lm",
        {"layers": 1, "mech": "m0"},
        {"tok": 6, "dm": 8, "head": 2, "dff": 16, "vocab": 13},
    ),
]
SEED = 3

LN_EPS = 1e-5
M0_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Tensors in the record's format


def to_torch(t):
    """A record tensor as a float64 torch tensor of its recorded shape (axes order)."""
    return torch.tensor(t["data"], dtype=torch.float64).reshape(t["shape"])


def permute_to(x, axes_from, axes_to):
    """Permutes a tensor laid out in `axes_from` into `axes_to` (the same set of axis names)."""
    assert sorted(axes_from) == sorted(axes_to), (axes_from, axes_to)
    return x.permute([axes_from.index(a) for a in axes_to])


def to_json(name, axes, x):
    x = x.detach().contiguous()
    return {
        "name": name,
        "axes": list(axes),
        "shape": list(x.shape),
        "data": [float(v) for v in x.reshape(-1).tolist()],
    }


# ---------------------------------------------------------------------------------------------
# Parameters by order and name suffix


class Params:
    """Hands out the record's parameter tensors in order, checking each one's name and axes, and
    returning it as a leaf tensor (requires_grad) laid out in the canonical axis order asked for."""

    def __init__(self, tensors):
        self.tensors = tensors  # list of (record tensor, leaf tensor in recorded layout)
        self.pos = 0

    def take(self, box, suffix, axes):
        if self.pos >= len(self.tensors):
            raise ValueError(f"ran out of parameters looking for a {box}{suffix}")
        t, leaf = self.tensors[self.pos]
        self.pos += 1
        name = t["name"]
        last = name.rsplit("/", 1)[-1]
        if not (last.startswith(box) and name.endswith(suffix)):
            raise ValueError(f"expected a `{box}*{suffix}` parameter, found `{name}`")
        return permute_to(leaf, t["axes"], axes)

    def linear(self, a_in, a_out):
        """A `linear[a_in -> a_out]`: (weight [in, out], bias [out])."""
        if a_in == a_out:
            a_in = a_in + "'"
        w = self.take("linear", ".weight", [a_in, a_out])
        b = self.take("linear", ".bias", [a_out])
        return w, b

    def layernorm(self, axis):
        g = self.take("layernorm", ".gain", [axis])
        b = self.take("layernorm", ".bias", [axis])
        return g, b

    def done(self):
        if self.pos != len(self.tensors):
            rest = [t["name"] for t, _ in self.tensors[self.pos :]]
            raise ValueError(f"parameters left unused: {rest}")


def linear(x, wb):
    w, b = wb
    return x @ w + b


# ---------------------------------------------------------------------------------------------
# The models


def split_heads(x, h):
    """[T, dm] -> [h, T, dk]: the row-major view [T, h, dk] (head-major), heads first."""
    t, dm = x.shape
    return x.view(t, h, dm // h).transpose(0, 1)


def merge_heads(o):
    """[h, T, d] -> [T, h * d], head-major."""
    h, t, d = o.shape
    return o.transpose(0, 1).reshape(t, h * d)


def m1(x, p, h):
    q = split_heads(linear(x, p.linear("dm", "dm")), h)
    k = split_heads(linear(x, p.linear("dm", "dm")), h)
    v = split_heads(linear(x, p.linear("dm", "dm")), h)
    # softmax(q k^T / sqrt(dk) + causal mask) v, per head; the default scale is 1/sqrt(dk).
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return linear(merge_heads(o), p.linear("dm", "dm"))


def m0(x, p, h):
    phi = lambda t: F.elu(t) + 1.0  # noqa: E731
    q = phi(split_heads(linear(x, p.linear("dm", "dm")), h))  # [h, T, dk]
    k = phi(split_heads(linear(x, p.linear("dm", "dm")), h))
    v = split_heads(linear(x, p.linear("dm", "dm")), h)  # [h, T, dv]
    s = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=1)  # S_i: [h, T, dk, dv]
    z = torch.cumsum(k, dim=1)  # z_i: [h, T, dk]
    num = torch.einsum("htd,htde->hte", q, s)
    den = (q * z).sum(-1, keepdim=True) + M0_EPS
    return linear(merge_heads(num / den), p.linear("dm", "dm"))


MECHANISMS = {"m0": m0, "m1": m1}


def positions(t, dm):
    pe = torch.zeros(t, dm)
    pos = torch.arange(t, dtype=torch.float64).unsqueeze(1)
    two_i = torch.arange(0, dm, 2, dtype=torch.float64)
    angle = pos / torch.pow(torch.tensor(10000.0), two_i / dm)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dm // 2])
    return pe


def layer_norm(x, gb):
    g, b = gb
    return F.layer_norm(x, (x.shape[-1],), weight=g, bias=b, eps=LN_EPS)


def lm(ids, p, h, mech, layers):
    table = p.take("embed", ".table", ["vocab", "dm"])
    dm = table.shape[1]
    x = F.embedding(ids, table) * math.sqrt(dm) + positions(ids.shape[0], dm)
    # Dropout: the identity in eval mode.
    for _ in range(layers):
        y = layer_norm(x + mech(x, p, h), p.layernorm("dm"))
        f = linear(F.relu(linear(y, p.linear("dm", "dff"))), p.linear("dff", "dm"))
        x = layer_norm(y + f, p.layernorm("dm"))
    return linear(x, p.linear("dm", "vocab"))


# ---------------------------------------------------------------------------------------------
# Records in, fixtures out


def infer_hypers(record):
    """For an LM record: the mechanism and the number of layers, from the parameter names."""
    names = [t["name"] for t in record["inputs"]]
    mechs = {seg.split(".")[0] for n in names for seg in n.split("/") if seg.split(".")[0] in MECHANISMS}
    if len(mechs) != 1:
        raise ValueError(f"cannot tell the mechanism from the parameter names: {sorted(mechs)}")
    layers = len({n.split("/block.")[0] for n in names if "/block." in n})
    return {"layers": layers, "mech": mechs.pop()}


def perturb_layernorm(record):
    """Replaces LayerNorm gains and biases (1 and 0 at diagc's initialisation) with fixed,
    non-trivial values: gain_i = 1 + 0.4 sin(1.3 i + k + 1), bias_i = 0.3 cos(0.7 i + 2 k), with k
    the tensor's index among the inputs. Returns the names replaced."""
    replaced = []
    for k, t in enumerate(record["inputs"]):
        last = t["name"].rsplit("/", 1)[-1]
        if not last.startswith("layernorm"):
            continue
        n = len(t["data"])
        if t["name"].endswith(".gain"):
            t["data"] = [1.0 + 0.4 * math.sin(1.3 * i + k + 1) for i in range(n)]
        elif t["name"].endswith(".bias"):
            t["data"] = [0.3 * math.cos(0.7 * i + 2 * k) for i in range(n)]
        else:
            continue
        replaced.append(t["name"])
    return replaced


def compute(record, hypers=None):
    """PyTorch's outputs and gradients (of the sum of all outputs) for a record's inputs, as
    (outputs, gradients) lists of record-format tensors."""
    if record.get("train"):
        raise ValueError("a training-mode record (dropout active) cannot be reproduced here")
    sizes = record["sizes"]
    diagram = record["diagram"]
    inputs = record["inputs"]
    leaves = []
    for t in inputs:
        if t["name"] == "ids":
            leaves.append(None)
        else:
            leaves.append(to_torch(t).requires_grad_(True))
    h = sizes["head"]
    if diagram in MECHANISMS:
        x_t = inputs[0]
        assert x_t["name"] == "x", x_t["name"]
        x = permute_to(leaves[0], x_t["axes"], ["tok", "dm"])
        p = Params(list(zip(inputs[1:], leaves[1:])))
        y = MECHANISMS[diagram](x, p, h)
        out_axes = ["tok", "dm"]
    elif diagram == "lm":
        hypers = hypers or infer_hypers(record)
        ids_t = inputs[0]
        assert ids_t["name"] == "ids", ids_t["name"]
        ids = torch.tensor([int(v) for v in ids_t["data"]], dtype=torch.long)
        assert all(float(int(v)) == v for v in ids_t["data"])
        p = Params(list(zip(inputs[1:], leaves[1:])))
        y = lm(ids, p, h, MECHANISMS[hypers["mech"]], int(hypers["layers"]))
        out_axes = ["tok", "vocab"]
    else:
        raise ValueError(f"no PyTorch implementation of `{diagram}`")
    p.done()
    y.sum().backward()
    (rec_out,) = record["outputs"]
    outputs = [to_json(rec_out["name"], rec_out["axes"], permute_to(y, out_axes, rec_out["axes"]))]
    gradients = []
    for t, leaf in zip(inputs, leaves):
        if leaf is None:
            continue
        g = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        gradients.append(to_json(t["name"], t["axes"], g))
    return outputs, gradients


def max_abs_diff(ours, theirs):
    """The largest absolute difference between two lists of tensors, matched by name."""
    by_name = {t["name"]: t for t in theirs}
    worst, at = 0.0, None
    for t in ours:
        o = by_name.get(t["name"])
        if o is None:
            raise ValueError(f"diagc recorded no `{t['name']}`")
        if o["axes"] != t["axes"] or o["shape"] != t["shape"]:
            raise ValueError(f"`{t['name']}`: axes or shape differ")
        for i, (a, b) in enumerate(zip(t["data"], o["data"])):
            d = abs(a - b)
            if at is None or d > worst:
                worst, at = d, f"{t['name']}[{i}]"
    if len(by_name) != len(ours):
        raise ValueError("diagc and PyTorch disagree on which tensors exist")
    return worst, at


def fixture_from_record(record, hypers=None, source=None, keep_ln=False):
    outs, grads = compute(record, hypers)
    d_out, at_out = max_abs_diff(outs, record["outputs"])
    d_grad, at_grad = max_abs_diff(grads, record["gradients"])
    print(
        f"{record['diagram']}{' ' + json.dumps(hypers) if hypers else ''}: "
        f"max |torch - diagc| outputs {d_out:.3e} (at {at_out}), "
        f"gradients {d_grad:.3e} (at {at_grad})"
    )
    fixture_record = json.loads(json.dumps(record))
    replaced = [] if keep_ln else perturb_layernorm(fixture_record)
    if replaced:
        outs, grads = compute(fixture_record, hypers)
    return {
        "source": source,
        "diagram": record["diagram"],
        "hypers": hypers or ({} if record["diagram"] != "lm" else infer_hypers(record)),
        "seed": record.get("seed"),
        "train": False,
        "torch_version": torch.__version__,
        "ln_perturbed": replaced,
        "diagc_record_max_abs_diff": {"outputs": d_out, "gradients": d_grad},
        "sizes": record["sizes"],
        "inputs": fixture_record["inputs"],
        "outputs": outs,
        "gradients": grads,
    }


def write_fixture(fixture, path):
    """JSON with one tensor per line (small diffs, still readable)."""
    lines = ["{"]
    keys = [k for k in fixture if k not in ("inputs", "outputs", "gradients")]
    for k in keys:
        lines.append(f"  {json.dumps(k)}: {json.dumps(fixture[k])},")
    groups = ["inputs", "outputs", "gradients"]
    for gi, g in enumerate(groups):
        lines.append(f"  {json.dumps(g)}: [")
        ts = fixture[g]
        for ti, t in enumerate(ts):
            lines.append("    " + json.dumps(t, separators=(",", ":")) + ("," if ti + 1 < len(ts) else ""))
        lines.append("  ]" + ("," if gi + 1 < len(groups) else ""))
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run_diagc(diagc, file, diagram, hypers, sizes, seed):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "record.json")
        cmd = [diagc, "run", file, "--diagram", diagram, "--seed", str(seed), "--save", out]
        for k, v in sizes.items():
            cmd += ["--size", f"{k}={v}"]
        for k, v in hypers.items():
            cmd += ["--hyper", f"{k}={v}"]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("record", nargs="?", help="a record written by `diagc run --save`")
    ap.add_argument("-o", "--output", help="where to write the fixture (default: print nothing)")
    ap.add_argument("--all", action="store_true", help="regenerate every fixture in tests/reference/")
    ap.add_argument("--diagc", default=os.path.join(ROOT, "target", "release", "diagc"))
    ap.add_argument("--keep-ln", action="store_true", help="keep the record's LayerNorm gains and biases")
    args = ap.parse_args()
    if args.all == bool(args.record):
        ap.error("give either a record or --all")
    print(f"torch {torch.__version__}")
    if args.all:
        for name, file, diagram, hypers, sizes in FIXTURES:
            record = run_diagc(args.diagc, file, diagram, hypers, sizes, SEED)
            fixture = fixture_from_record(record, hypers, file, args.keep_ln)
            path = os.path.join(HERE, f"{name}.json")
            write_fixture(fixture, path)
            print(f"  wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")
        return 0
    with open(args.record) as f:
        record = json.load(f)
    fixture = fixture_from_record(record, keep_ln=args.keep_ln)
    if args.output:
        write_fixture(fixture, args.output)
        print(f"  wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
