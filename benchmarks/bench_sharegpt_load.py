"""Loading a ~100 MB ShareGPT file: seconds and peak memory, cold and from the tokenization cache.

The harness writes a ShareGPT-format file of about ``--size-mb`` MB (seeded words; 2-8 turns a
conversation; every fifth conversation shares one system prompt) into a temporary directory,
then runs each case in a fresh child process (so each peak RSS is its own, read with
``os.wait4``):

1. cold: ``sharegpt_load.load_conversations`` parses, validates and tokenizes the file and
   writes the tokenization cache. BASELINE: ``json.loads`` of the same bytes alone (what any
   reader of the file pays).
2. warm: the same call again; the cache (keyed on the file's SHA-256 and the tokenizer) is hit,
   so only the file is read and hashed and the arrays loaded. BASELINE: reading and hashing the
   file alone.
3. trace: ``generate_sharegpt`` from the warm cache plus the trace's SHA-256 (what a run does
   before its window). BASELINE: the warm load alone.

Cases 1 and 2 run with the chars/4 estimate and, when quicktok-v1 is installed, with its
``cl100k`` encoding. Peak RSS is compared with a child that only imports the package. The
cache goes to a temporary directory removed at the end (``--cache-dir`` keeps it elsewhere);
runs of the plugin keep theirs under ``~/.cache/pytest-kvcache/sharegpt`` (``--kv-sharegpt-cache``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as C

NAME = "bench_sharegpt_load"
WORDS = ("the drive cache block token prompt reply model user system question answer latency storage "
         "memory read write file data server request turn context history prefix layer value key "
         "please explain why how what when which could would should because however example code "
         "python function return list error issue fix test run time second faster slower result").split()


def make_file(path: Path, size_mb: float, seed: int = 1) -> dict:
    """A ShareGPT file of about ``size_mb`` MB; returns its shape."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    words = np.array(WORDS)
    system = {"from": "system", "value": " ".join(rng.choice(words, 300)) + "."}
    target = size_mb * 1e6
    written = conversations = messages = 0
    with path.open("w", encoding="utf-8") as f:
        f.write("[")
        while written < target:
            turns = int(rng.integers(1, 5))
            msgs = [system] if conversations % 5 == 0 else []
            for _ in range(turns):
                for role, n in (("human", int(rng.integers(20, 300))), ("gpt", int(rng.integers(50, 900)))):
                    msgs.append({"from": role, "value": " ".join(rng.choice(words, n))})
            text = json.dumps({"id": f"gen{conversations:07d}", "conversations": msgs})
            f.write(("," if conversations else "") + text)
            written += len(text) + 1
            conversations += 1
            messages += len(msgs)
        f.write("]")
    return {"bytes": path.stat().st_size, "conversations": conversations, "messages": messages}


def child(case: str, path: str, tokenizer: str, cache: str) -> dict:
    """One case in this (fresh) process: seconds of the work, and what it produced."""
    import hashlib

    from pytest_kvcache.workload.sharegpt import ShareGPTParams, generate_sharegpt
    from pytest_kvcache.workload.sharegpt_load import load_conversations

    t = time.perf_counter()
    out: dict = {}
    if case == "import":
        pass
    elif case == "json":
        out["entries"] = len(json.loads(Path(path).read_bytes()))
    elif case == "hash":
        out["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    elif case in ("cold", "warm"):
        convs = load_conversations(path, tokenizer, cache)
        out.update(tokens=int(len(convs.ids)), conversations=len(convs), cache=convs.cache.split(" ")[0])
    elif case == "trace":
        sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        trace = generate_sharegpt(ShareGPTParams(path, sha, tokenizer, 42, 64, cache=cache))
        out.update(requests=len(trace), trace_sha256=trace.sha256(), cache=trace.source["tokenization_cache"].split(" ")[0])
    out["seconds"] = time.perf_counter() - t
    return out


def run_child(case: str, path: Path, tokenizer: str, cache: Path) -> dict:
    """The case in a child process: its own seconds and result, and its peak RSS (wait4)."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", case, str(path), tokenizer, str(cache)],
                            stdout=subprocess.PIPE, text=True, cwd=C.ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"child {case} failed (status {status}): {out}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:6])))
        return
    p = C.parser(NAME, __doc__, reps=None)
    p.add_argument("--size-mb", type=float, default=100.0, help="size of the generated ShareGPT file in MB")
    p.add_argument("--dir", default=None, help="where the file goes (default: the system temp dir)")
    p.add_argument("--cache-dir", type=Path, default=None, help="tokenization cache (default: inside the temp dir)")
    args = p.parse_args()
    work = C.bench_dir(args.dir, NAME)
    try:
        path = work / "sharegpt.json"
        t = time.perf_counter()
        shape = make_file(path, args.size_mb)
        print(f"generated {path}: {shape['bytes'] / 1e6:.1f} MB, {shape['conversations']:,} conversations, "
              f"{shape['messages']:,} messages in {time.perf_counter() - t:.1f} s")
        cache = args.cache_dir or work / "cache"
        tokenizers = ["estimate"]
        try:
            import quicktok  # noqa: F401

            tokenizers.append("cl100k")
        except ImportError:
            print("quicktok-v1 not installed: the cl100k cases are skipped")
        raw: dict = {"file": shape}
        base = {case: run_child(case, path, "estimate", cache) for case in ("import", "json", "hash")}
        raw["baselines"] = base
        rows = []
        for tok in tokenizers:
            cold = run_child("cold", path, tok, cache)
            warm = run_child("warm", path, tok, cache)
            raw[tok] = {"cold": cold, "warm": warm}
            assert cold["cache"] == "written" and warm["cache"] == "hit", (cold, warm)
            rows += [C.row(f"{tok}: cold load + tokenize", "s", [cold["seconds"]], [base["json"]["seconds"]],
                           note=f"{cold['tokens']:,} tokens; baseline json.loads alone"),
                     C.row(f"{tok}: cold peak RSS", "MB", [cold["peak_rss_mb"]], [base["import"]["peak_rss_mb"]],
                           note=f"baseline: import only; json.loads alone {base['json']['peak_rss_mb']:.0f} MB"),
                     C.row(f"{tok}: cached load", "s", [warm["seconds"]], [base["hash"]["seconds"]],
                           note="baseline: read + SHA-256 of the file"),
                     C.row(f"{tok}: cached peak RSS", "MB", [warm["peak_rss_mb"]], [base["import"]["peak_rss_mb"]])]
        trace = run_child("trace", path, "estimate", cache)
        raw["trace"] = trace
        rows.append(C.row("estimate: trace build + SHA-256 (cached)", "s", [trace["seconds"]],
                          [raw["estimate"]["warm"]["seconds"]],
                          note=f"{trace['requests']:,} requests, 64 users; baseline: the cached load"))
        rows.append(C.row("estimate: trace peak RSS", "MB", [trace["peak_rss_mb"]], [base["import"]["peak_rss_mb"]]))
        C.print_table(f"ShareGPT load of {shape['bytes'] / 1e6:.0f} MB (one run each, fresh process)", rows,
                      "see note")
        cache_bytes = sum(f.stat().st_size for f in Path(cache).glob("*.npz"))
        print(f"tokenization cache: {cache} ({cache_bytes / 1e6:.0f} MB for {len(tokenizers)} tokenizer(s))")
        raw["cache_bytes"] = cache_bytes
        C.write_json(args.json, NAME, "ok", {"size_mb": args.size_mb, "cache_dir": str(cache)}, rows, raw=raw,
                     baseline_name="see note")
    finally:
        C.cleanup_dir(work)


if __name__ == "__main__":
    main()
