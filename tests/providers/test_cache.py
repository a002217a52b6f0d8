"""Disk cache: stable keys without credentials, JSON values, durability, several processes at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from providers.adapters import make_adapter
from providers.cache import ResponseCache, cache_key
from providers.types import Completion, Message, Request, TokenLogprob, Usage

SECRET = "sk-test-cache-SECRET-0123456789"


def _completion(i: int) -> Completion:
    return Completion(texts=(f"answer {i}",), logprobs=((TokenLogprob("answer", -0.1, (("answer", -0.1), ("x", -3.0))),),),
                      usage=Usage(5, 1, 2), model="m", finish_reasons=("stop",))


def test_key_is_canonical_and_excludes_the_api_key():
    req = Request(messages=(Message("user", "hi"),), top_logprobs=3)
    a1 = make_adapter("openai", "gpt-4o-mini", api_key=SECRET)
    a2 = make_adapter("openai", "gpt-4o-mini", api_key="sk-other-key-999999999")
    assert cache_key(a1.cache_material(req)) == cache_key(a2.cache_material(req))  # the key never matters
    assert cache_key({"b": 1, "a": [1, 2]}) == cache_key({"a": [1, 2], "b": 1})
    other = make_adapter("openai", "gpt-4o", api_key=SECRET)
    assert cache_key(a1.cache_material(req)) != cache_key(other.cache_material(req))
    longer = Request(messages=req.messages, top_logprobs=3, max_tokens=17)
    assert cache_key(a1.cache_material(req)) != cache_key(a1.cache_material(longer))
    raw = Request(messages=req.messages, top_logprobs=3, raw_completion=True)
    compat = make_adapter("compatible", "gpt-4o-mini", base_url="http://127.0.0.1:1/v1")
    assert cache_key(compat.cache_material(raw)) != cache_key(compat.cache_material(req))  # endpoint differs
    assert cache_key(compat.cache_material(req)) != cache_key(a1.cache_material(req))  # provider differs


def test_roundtrip_and_json_values(tmp_path):
    c = ResponseCache(tmp_path)
    c.put("k", _completion(1))
    assert c.get("k") == _completion(1) and "k" in c and c.get("missing") is None
    c.close()
    again = ResponseCache(tmp_path)  # reopened (a new process in practice): still there
    assert again.get("k") == _completion(1) and len(again) == 1


WRITER = """
import sys
from providers.cache import ResponseCache
from providers.types import Completion, Usage
c = ResponseCache(sys.argv[1])
start = int(sys.argv[2])
for i in range(start, start + 50):
    c.put(f"key{i}", Completion(texts=(f"answer {i}",), usage=Usage(5, 1, 2), model="m"))
"""


def test_several_processes_share_one_directory(tmp_path):
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(50 * p)], cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)}) for p in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    c = ResponseCache(tmp_path)
    assert len(c) == 150
    assert all(c.get(f"key{i}").texts == (f"answer {i}",) for i in range(150))


HOLDER = """
import sys, time
from providers.cache import ResponseCache
c = ResponseCache(sys.argv[1])
assert c.claim("k")
print("held", flush=True)
time.sleep(60)
"""


def test_claims_are_exclusive_and_die_with_their_holder(tmp_path):
    c = ResponseCache(tmp_path)
    assert c.claim("k")
    assert not c.claim("k")  # exclusive within one process too: two runners there must not both send
    other = ResponseCache(tmp_path)  # a second cache object of this process on the same directory
    assert not other.claim("k")
    c.close()  # closing one cache object drops no claim of another
    assert not other.claim("k")
    c.release("k")
    assert other.claim("k") and not c.claim("k")
    other.release("k")

    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=root, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not c.claim("k")  # held by another process
        assert c.claim("k2")  # other keys are free
        c.release("k2")
    finally:
        holder.kill()  # kill -9: no chance to release
        holder.wait(10)
    assert c.claim("k")  # the kernel dropped the dead holder's claim


def test_a_directory_made_again_starts_without_claims(tmp_path):
    import shutil

    d = tmp_path / "cache"
    old = ResponseCache(d)
    assert old.claim("k")
    shutil.rmtree(d)  # the user deletes the cache while this process holds a claim on the old lock file
    assert ResponseCache(d).claim("k")  # the new directory's lock file is a new file: no stale claim
