"""The option table: every run setting's name, kind, default and help, in one place.

The table drives the pytest options, the ini keys, the environment variables
(``KVCACHE_<NAME>``), the YAML keys and the fields of ``settings.Settings``, so they can never
drift apart. Options are grouped by concern; a feature adds its own group to ``OPTIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .eviction import POLICIES as EVICTIONS
from .eviction import PROMOTIONS

GENERATION_MODES = ("none", "fast", "realistic")
READ_MODELS = ("once", "reference")
FILE_IO_MODES = ("auto", "direct", "buffered")
PROFILES = ("latency", "throughput", "none")
WORKLOADS = ("chat", "rag", "mixed", "sharegpt")
AUTOSCALE_MODES = ("off", "qos", "capacity", "sla-search")
PRESETS = ("none", "mlperf-closed")
PHASES = ("mixed", "prefill", "decode")


@dataclass(frozen=True)
class Option:
    name: str  # settings field; CLI --kv-<name with - for _>; ini kv_<name>; env KVCACHE_<NAME>
    kind: str  # int, count (int >= 0), posint, nonneg, posfloat, choice, str, path, list
    default: Any
    help: str
    choices: tuple = ()

    @property
    def flag(self) -> str:
        return "--kv-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "kv_" + self.name

    @property
    def env(self) -> str:
        return "KVCACHE_" + self.name.upper()


# the model, the tiers and the run's shape
TIER_OPTIONS: tuple[Option, ...] = (
    Option("model", "str", "tiny-1b", "model from the catalog (or a --kv-config YAML) whose KV size per token is used"),
    Option("config", "path", None, "YAML file with settings and custom models (keys as the option names)"),
    Option("cache_dir", "path", None, "directory on the drive under test in which the run makes its private directory (default: the system temp dir, or /var/tmp when that is memory)"),
    Option("allow_memory_fs", "flag", False, "let --kv-cache-dir be on memory (tmpfs, ramfs, an overlay on tmpfs, a RAM disk): its figures are marked 'memory, not a drive' and fail storage.memory_tiers==0"),
    Option("gpu_mem_gb", "nonneg", 1.0, "GPU tier budget in GB"),
    Option("cpu_mem_gb", "nonneg", 1.5, "CPU tier budget in GB"),
    Option("nvme_capacity_gb", "nonneg", 0.0, "nvme tier budget in GB (0 = half the free space, at most 64 GB)"),
    Option("nvme_backend", "str", "file", "backend implementing the nvme tier"),
    Option("users", "posint", 4, "concurrent simulated users (closed loop)"),
    Option("duration", "posfloat", 15.0, "measurement window in seconds"),
    Option("warmup", "nonneg", 2.0, "seconds of load before the window opens"),
    Option("seed", "int", 42, "root seed of the workload trace"),
    Option("generation_mode", "choice", "fast", "decode pacing: none (0), fast (2 ms/token), realistic (30 ms/token)", GENERATION_MODES),
    Option("read_model", "choice", "once", "once: load the KV once per request; reference: re-read it every 32 decoded tokens (MLPerf parity)", READ_MODELS),
    Option("chunk_tokens", "int", 256, "tokens per KV chunk (0 = one entry per request segment, as the MLPerf reference)"),
)
# what the users ask (the seeded workload trace)
WORKLOAD_OPTIONS: tuple[Option, ...] = (
    Option("requests_per_user", "posint", 500, "length of each user's request list in the trace"),
    Option("think_time_scale", "nonneg", 1.0, "multiplier on the personas' think times (0 = none)"),
    Option("workload", "choice", "chat", "chat: the personas' multi-turn conversations, shaped by the prompt options below; rag: documents stored before the window, queries that load their top-k documents then ask a question (scenarios/test_rag.py sets it for itself); mixed: both in one run, every user a RAG or a chat user by --kv-rag-user-share (the kitchen-sink scenario); sharegpt: the conversations of --kv-sharegpt (scenarios/test_sharegpt.py sets it for itself)", WORKLOADS),
    Option("system_prompt_tokens", "count", 0, "tokens of one system prompt shared by every request (its KV blocks are stored once and hit by all; 0 = none)"),
    Option("prefix_pool", "count", 0, "number of shared prefix prompts (seed 000's pool); each conversation draws one (0 = no pool; needs --kv-prefix-tokens)"),
    Option("prefix_tokens", "count", 0, "tokens of each prefix of the pool (needs --kv-prefix-pool 1 or more)"),
    Option("input_tokens_mean", "nonneg", 0.0, "mean of each turn's new prompt tokens, a positive normal draw (0 = uniform in the personas' ranges)"),
    Option("input_tokens_stddev", "nonneg", 0.0, "standard deviation of each turn's new prompt tokens (needs --kv-input-tokens-mean)"),
    Option("output_tokens_mean", "nonneg", 0.0, "mean of each turn's generated tokens, a positive normal draw (0 = uniform in the personas' ranges)"),
    Option("output_tokens_stddev", "nonneg", 0.0, "standard deviation of each turn's generated tokens (needs --kv-output-tokens-mean)"),
    Option("rag_documents", "posint", 10, "RAG: documents stored before the window (--kv-workload rag)"),
    Option("rag_doc_tokens_min", "count", 0, "RAG: smallest document in tokens (0 = 4,000, or 1,024 for models of 64 layers or more)"),
    Option("rag_doc_tokens_max", "count", 0, "RAG: largest document in tokens (0 = 12,000, or 4,096 for models of 64 layers or more)"),
    Option("rag_top_k", "posint", 2, "RAG: documents each query retrieves (Zipf-skewed, distinct; at most --kv-rag-documents)"),
    Option("rag_user_share", "nonneg", 0.25, "--kv-workload mixed: share of users that are RAG users, 0 to 1, by a fixed stride (0.25 = users 0, 4, 8, ...); the others are chat users"),
)
# how requests arrive and are admitted; the autoscaler
LOAD_OPTIONS: tuple[Option, ...] = (
    Option("max_inflight", "int", 0, "at most this many requests in service at once (worker threads); the rest wait in the admission queue (0 = min(users, 256), vLLM's default max_num_seqs)"),
    Option("request_rate", "nonneg", 0.0, "open-loop arrivals: seeded Poisson requests per second into a bounded admission queue (0 = closed-loop users)"),
    Option("queue_depth", "int", 64, "open loop: most requests waiting for service; an arrival beyond it is rejected and counted"),
    Option("max_concurrent_allocs", "int", 0, "at most this many cache stores (allocations) under way at once, as MLPerf's --max-concurrent-allocs (0 = no bound)"),
    Option("qos_aging", "nonneg", 0.5, "seconds of queue wait per QoS class step up, so batch requests cannot starve (0 = no aging)"),
    Option("autoscale", "choice", "off", "grow and shrink the closed-loop user pool during the run, starting from --kv-users: qos holds the saturation --kv-autoscale-target (step p95 of --kv-sla-metric / --kv-sla-target-ms), capacity grows users while storage GB/s rises and stops after two steps without a gain, sla-search finds the most users whose step p95 of --kv-sla-metric meets --kv-sla-target-ms (off = a fixed user count)", AUTOSCALE_MODES),
    Option("autoscale_interval", "posfloat", 2.0, "seconds of one measured step of --kv-autoscale (after a change of the user count, half as long again settles unmeasured first)"),
    Option("autoscale_max_users", "posint", 32, "--kv-autoscale: most users the pool may grow to (the trace holds this many users)"),
    Option("autoscale_target", "posfloat", 0.8, "--kv-autoscale qos: saturation to hold; scale up below target-0.1, down above target+0.1"),
    Option("sla_metric", "str", "storage.read.p95", "--kv-autoscale qos / sla-search: the latency judged per step: <tier>.<op>.<p50|p95|p99> (tier 'storage' = the scenario's storage tier), e2e.<stat> or qos.<class>.<stat> (end to end)"),
    Option("sla_target_ms", "posfloat", 200.0, "--kv-autoscale qos / sla-search: the SLA target of --kv-sla-metric in milliseconds"),
)
# how the file tier does its I/O
IO_OPTIONS: tuple[Option, ...] = (
    Option("io_block_mb", "posfloat", 4.0, "largest single transfer (and per-thread staging buffer) in MiB"),
    Option("file_io_mode", "choice", "auto", "file tier I/O: auto (O_DIRECT where the file system honours it), direct, buffered", FILE_IO_MODES),
    Option("file_recycle", "choice", "on", "file tier: on = a freed chunk's file is kept and overwritten in place by a later write (no file creation per write); off = unlink on free, create on write", ("on", "off")),
)
# criteria and what the run writes
REPORT_OPTIONS: tuple[Option, ...] = (
    Option("profile", "choice", "latency", "default criteria: latency, throughput or none", PROFILES),
    Option("threshold", "list", (), "criterion such as 'nvme.read.p95<=200ms' (repeatable)"),
    Option("report", "path", "kvcache-report.json", "where the JSON session report is written ('' = none)"),
    Option("plots", "path", None, "write PNG plots and an index.html of the session into this directory (needs the plots extra)"),
    Option("verify", "flag", False, "check every block read against what was written; mismatches fail the scenario"),
)
# repeated runs, preconditioning, phases and presets
PROCEDURE_OPTIONS: tuple[Option, ...] = (
    Option("trials", "posint", 1, "run each scenario this many times (fresh tiers each trial, same seed); figures are the mean over trials with a 95 percent confidence interval and CV (summary.trials), criteria gate on the mean"),
    Option("precondition_gb", "nonneg", 0.0, "before the window, fill the storage tier's drive with this many GB of files (excluded from every figure, removed at the end; 0 = off)"),
    Option("phase", "choice", "mixed", "mixed: requests load their cached prefix and store the rest; prefill: store only, never load (write-heavy, a disaggregated prefill node); decode: the prompts are stored before the window, then requests only load (read-heavy, a decode node)", PHASES),
    Option("preset", "choice", "none", "mlperf-closed: run scenarios/test_mlperf.py's three MLPerf Storage CLOSED options with the rules' fixed settings (only --kv-cache-dir, --kv-report, --kv-plots, --kv-allow-memory-fs, --kv-nvme-backend, --kv-mpi-timeout and --kv-smoke may be set)", PRESETS),
    Option("smoke", "flag", False, "with --kv-preset: the same shape (three options, trials, aggregation) in seconds, not a submission"),
)
# production traces, exact replay and the I/O trace (workload/replay.py, iotrace.py)
TRACE_FORMATS = ("auto", "jsonl", "mooncake", "burstgpt")
TRACE_QOS = ("interactive", "responsive", "batch")
TRACE_OPTIONS: tuple[Option, ...] = (
    Option("trace", "path", None, "replay this trace file instead of the generated workload: our JSONL (exact replay of a --kv-trace-save file), a Mooncake JSONL (timestamp ms, input_length, output_length, hash_ids) or a BurstGPT CSV; timestamped traces arrive at their own times through the bounded admission queue (--kv-queue-depth)"),
    Option("trace_format", "choice", "auto", "format of --kv-trace: auto (from the file's first line), jsonl, mooncake or burstgpt", TRACE_FORMATS),
    Option("trace_block_tokens", "posint", 512, "Mooncake: tokens each hash id stands for (its KV block size); requests that share hash ids share those KV blocks"),
    Option("trace_speedup", "posfloat", 1.0, "replay a timestamped trace this many times faster (2 = arrivals twice as close)"),
    Option("trace_model", "str", "", "BurstGPT: keep only rows of this Model (e.g. ChatGPT or GPT-4; '' = all)"),
    Option("trace_log_type", "str", "", "BurstGPT: keep only rows of this Log Type (e.g. 'Conversation log' or 'API log'; '' = all)"),
    Option("trace_qos", "choice", "responsive", "QoS class of the requests of a Mooncake or BurstGPT trace (they carry none)", TRACE_QOS),
    Option("trace_max_requests", "count", 0, "replay only the first N requests of --kv-trace (after filters; 0 = all)"),
    Option("trace_save", "path", None, "write the trace each scenario ran as our versioned JSONL; --kv-trace replays it exactly (same trace hash) on another drive"),
    Option("io_trace", "path", None, "write every I/O of each scenario as CSV (MLPerf reference columns Timestamp, Operation, Object_Size_Bytes, Tier, Key, Phase, plus Window); the scenario name goes before the suffix; .gz (or .zst with the zstandard package) compresses; buffered in memory during the run, written after it"),
)
# the network tiers: a Redis server and an S3-compatible object store (remote.py)
REMOTE_OPTIONS: tuple[Option, ...] = (
    Option("redis_url", "str", "", "Redis server of the redis tier, redis://[:password@]host:port/db (empty: the scenarios start a local redis-server on a loopback port, or skip without one; the report shows the URL without its password)"),
    Option("redis_mem_gb", "nonneg", 1.0, "redis tier budget in GB (the values this run keeps on the server)"),
    Option("s3_endpoint", "str", "", "S3 endpoint URL of the object tier, e.g. http://minio:9000 (empty with --kv-s3-bucket: AWS itself or AWS_ENDPOINT_URL; empty without: the scenarios start a local moto server, or skip without one)"),
    Option("s3_bucket", "str", "", "existing bucket the object tier writes into, under a kvcache-run-* prefix that it removes at the end (needed with --kv-s3-endpoint)"),
    Option("s3_region", "str", "", "region of the S3 client (empty: the AWS configuration's, else us-east-1)"),
    Option("s3_profile", "str", "", "AWS profile whose credentials the object tier uses (empty: the usual chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role); credentials are never options, so never in the report"),
    Option("object_capacity_gb", "nonneg", 1.0, "object tier budget in GB (the objects this run keeps in the bucket)"),
    Option("object_part_mb", "posfloat", 8.0, "object tier: a chunk larger than this many MiB is uploaded as a multipart upload in parts of this size (S3's minimum part is 5 MiB)"),
    Option("remote_timeout", "posfloat", 10.0, "seconds a redis or S3 call may wait on the network (connect, or a reply) before it fails the run; no call is retried"),
)
# ShareGPT replay: real conversations from a file (workload/sharegpt.py)
SHAREGPT_OPTIONS: tuple[Option, ...] = (
    Option("sharegpt", "path", None, "ShareGPT-format JSON file to replay (a list of {id, conversations: [{from, value}]} or {id, messages: [{role, content}]}): each user turn is a request whose prompt is the conversation so far, each reply its output (scenarios/test_sharegpt.py, or --kv-workload sharegpt)"),
    Option("tokenizer", "str", "estimate", "token counts and ids of --kv-sharegpt text: estimate (chars/4, ids derived from the text), an encoding shipped by quicktok-v1 (llama3, cl100k, o200k, o200k_harmony, qwen3), or a tokenizer.json file (HF tokenizers); both from the tokenizers extra, offline"),
    Option("sharegpt_conversations", "count", 0, "--kv-sharegpt: replay at most this many conversations, the first of the seeded order (0 = all)"),
    Option("sharegpt_max_input_tokens", "count", 0, "--kv-sharegpt: a conversation ends before the first turn whose prompt (system prompt, earlier turns and its own text) exceeds this many tokens (0 = no cap)"),
    Option("sharegpt_max_output_tokens", "count", 0, "--kv-sharegpt: a reply longer than this many tokens is cut to it, as a serving request's max_tokens (0 = no cap)"),
    Option("sharegpt_cache", "str", "auto", "--kv-sharegpt: where tokenized files are kept, keyed on the file's SHA-256 and the tokenizer: auto ($XDG_CACHE_HOME or ~/.cache, under pytest-kvcache/sharegpt), off, or a directory"),
)
# multi-client runs under mpirun (cluster.py)
CLUSTER_OPTIONS: tuple[Option, ...] = (
    Option("mpi_timeout", "posfloat", 600.0, "under mpirun: seconds a rank waits at a barrier for the other ranks (besides the scenario's warm-up and window) before the job is ended with the reason; a rank that failed or skipped a scenario never arrives"),
)
# where loads end: the compute device (compute.py)
GPU_OPTIONS: tuple[Option, ...] = (
    Option("compute_device", "choice", "auto", "where a load from the cache ends: auto = GPU memory when torch sees a CUDA device (each load from cpu or nvme is then followed by an H2D copy, its own figures compute.h2d.*; a gpu-tier hit moves nothing), else host memory; gpu = the GPU or a usage error; host = host memory (the staging buffer)", ("auto", "host", "gpu")),
)
# which entries leave a full tier, and whether a lower tier's hit moves up (cache.py, eviction.py)
CACHE_POLICY_OPTIONS: tuple[Option, ...] = (
    Option("eviction", "choice", "lru", "which entry a full tier demotes (or, the last tier, evicts) first: lru = least recently used (the MLPerf reference's waterfall LRU); lfu = fewest reads, then least recent; size = largest first, then least recent (SIZE, Williams et al. 1996); s3fifo = S3-FIFO (Yang et al., SOSP 2023)", EVICTIONS),
    Option("promotion", "choice", "none", "none: a hit stays in the tier that served it; on-hit: a hit in a lower tier is copied up into the top tier (demoting there as needed) and freed below, recorded as the top tier's promote_write", PROMOTIONS),
)
OPTIONS: tuple[Option, ...] = (TIER_OPTIONS + WORKLOAD_OPTIONS + LOAD_OPTIONS + IO_OPTIONS + REPORT_OPTIONS + PROCEDURE_OPTIONS
                               + SHAREGPT_OPTIONS + TRACE_OPTIONS + REMOTE_OPTIONS + CLUSTER_OPTIONS + GPU_OPTIONS
                               + CACHE_POLICY_OPTIONS)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}
