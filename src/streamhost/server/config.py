"""Model-server settings: command-line flags over the environment, the way the TGI and LMI images read them.

One function, :func:`load_settings`, decides everything before any model work starts, so a bad
setting fails at once with a message naming the setting and the value (never mid-load):

- the model: ``--model-id`` > ``serving.properties`` ``option.model_id`` > ``OPTION_MODEL_ID`` >
  ``HF_MODEL_ID`` > ``--model-dir`` > ``smollm2`` (the embedded default);
- the dialect: ``--dialect``, else ``lmi`` when the model folder holds ``serving.properties`` or an
  ``OPTION_*`` variable is set, else ``tgi``;
- ``HF_MODEL_REVISION``, ``HF_MODEL_TRUST_REMOTE_CODE`` (or ``option.trust_remote_code``),
  ``HF_MODEL_QUANTIZE`` / ``OPTION_QUANTIZE`` (a llama.cpp type on CPU: the model is converted to GGUF and
  quantized once, cached), ``--executor`` / ``STREAMHOST_EXECUTOR`` (torch | llamacpp),
  ``option.tensor_parallel_degree`` > ``OPTION_TENSOR_PARALLEL_DEGREE`` > ``SM_NUM_GPUS`` >
  ``NUM_SHARD``, ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN`` (for hub downloads, never logged),
  ``STREAMHOST_CACHE`` (converted models), ``STREAMHOST_BATCH_INVARIANT``, ``--compile`` /
  ``--no-compile`` > ``STREAMHOST_COMPILE`` (torch.compile of small steps; default per device,
  ``engine/compiled_step.py``); ``--lean-forward`` / ``--no-lean-forward`` > ``STREAMHOST_LEAN_FORWARD``
  (our Llama-family forward, ``engine/lean_llama.py``; default on where the architecture allows);
  ``--compile-lean`` / ``--no-compile-lean`` > ``STREAMHOST_COMPILE_LEAN`` (torch.compile of the lean
  forward's decoder layer, ``engine/lean_compiled.py``); ``--prefill-chunk`` > ``STREAMHOST_PREFILL_CHUNK``
  (prompt tokens per step, all sequences together; default per device, ``engine/core.py``);
- the engine core: its own process unless ``--no-engine-process`` / ``STREAMHOST_ENGINE_PROCESS=0``,
  on ``--engine-cores`` / ``STREAMHOST_ENGINE_CORES`` (a count or a CPU list such as ``0-1``);
  ``--prefix-cache`` / ``--no-prefix-cache`` > ``STREAMHOST_PREFIX_CACHE`` (KV reuse across requests
  sharing a prompt prefix, ``engine/prefix_cache.py``; default on);
  ``--decode-threads`` / ``STREAMHOST_DECODE_THREADS`` (llama.cpp threads for steps of up to 16
  tokens; default every engine core, ``engine/executors/llamacpp_threads.py``);
  ``--cache-type-k`` / ``--cache-type-v`` / ``--flash-attn`` > ``STREAMHOST_CACHE_TYPE_K`` /
  ``STREAMHOST_CACHE_TYPE_V`` / ``STREAMHOST_LLAMACPP_FLASH_ATTN`` (llama.cpp's KV cells,
  ``engine/executors/llamacpp_kv.py``);
- dtype: ``--dtype`` > ``option.dtype`` > ``OPTION_DTYPE`` > ``DTYPE`` (engine default: bf16 where fast);
- the limits: TGI's names (``MAX_TOTAL_TOKENS``, ...) > ``serving.properties`` > ``OPTION_*``
  variables > LMI's plain names > defaults shaped by the model's context length. Within LMI the
  file wins over its variables (DJL's rule); TGI's names win over LMI's (``engine/limits.py``).

The result for the engine is one :class:`~streamhost.engine.config.EngineConfig`
(``ServerSettings.engine``), passed to ``Engine.load``: nothing below the server reads the
environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streamhost.engine.config import EngineConfig, LimitSettings
from streamhost.engine.limits import SETTING_NAMES, ExecutionOptions, parse_dtype
from streamhost.engine.loader import default_cache_dir
from streamhost.server.model_folder import ModelFolderError, model_root, served_model
from streamhost.server.serving_properties import ServingProperties, ServingPropertiesError

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"  # docs/architecture.md: bind locally unless told otherwise (containers pass --host 0.0.0.0)
DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_MODEL = "smollm2"
SERVING_PROPERTIES = "serving.properties"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it, its value and what is allowed."""


@dataclass(frozen=True)
class ServerSettings:
    """Everything the model server needs to start, resolved from flags and environment."""

    model_id: str
    dialect: str = "tgi"  # tgi | lmi
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    revision: str | None = None
    dtype: str | None = None  # a torch dtype name, None = the engine's choice
    trust_remote_code: bool = False
    quantize: str | None = None  # HF_MODEL_QUANTIZE / OPTION_QUANTIZE: a llama.cpp type on CPU (q8_0, q4_k_m, ...)
    executor: str | None = None  # --executor / STREAMHOST_EXECUTOR: torch | llamacpp (None: chosen per model)
    num_shards: int | None = None
    model_dir: Path | None = None
    properties: ServingProperties | None = None  # LMI configuration (dialect lmi)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    load_timeout: float | None = None  # option.model_loading_timeout, seconds
    payload_limit: int = 2_000_000
    compute_type: str | None = None  # TGI's x-compute-type header (default: the device)
    log_level: str = "info"
    engine: EngineConfig = field(default_factory=EngineConfig)  # what the engine is told

    def describe(self) -> str:
        """One line for the log (no secrets)."""
        parts = [f"model={self.model_id}", f"dialect={self.dialect}", f"listen={self.host}:{self.port}"]
        if self.revision:
            parts.append(f"revision={self.revision}")
        if self.dtype:
            parts.append(f"dtype={self.dtype}")
        if self.quantize:
            parts.append(f"quantize={self.quantize}")
        if self.executor:
            parts.append(f"executor={self.executor}")
        return " ".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``streamhost container``; each overrides its environment variable."""
    parser.add_argument(
        "--model-id",
        default=None,
        help="model to serve: smollm2, a folder, a .gguf, a model.tar.gz or a hub id (env HF_MODEL_ID)",
    )
    parser.add_argument("--model-dir", default=None, help="folder with the weights, or with serving.properties (LMI)")
    parser.add_argument("--revision", default=None, help="hub revision (env HF_MODEL_REVISION)")
    parser.add_argument(
        "--dialect",
        choices=("tgi", "lmi"),
        default=None,
        help="how /invocations answers {inputs} (default: lmi when serving.properties or OPTION_* is present)",
    )
    parser.add_argument(
        "--host", default=None, help=f"address to bind (default {DEFAULT_HOST}; containers use 0.0.0.0)"
    )
    parser.add_argument("--port", type=int, default=None, help=f"port (env PORT; default {DEFAULT_PORT})")
    parser.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 | auto (env OPTION_DTYPE / DTYPE)")
    parser.add_argument(
        "--executor",
        default=None,
        help="torch | llamacpp | auto (env STREAMHOST_EXECUTOR; default: llamacpp for GGUF models on CPU)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", default=None, help="env HF_MODEL_TRUST_REMOTE_CODE")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the small (decode) steps, cached on disk (env STREAMHOST_COMPILE; default per device)",
    )
    parser.add_argument(
        "--lean-forward",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch executor: our fused, prepacked Llama-family forward (env STREAMHOST_LEAN_FORWARD; "
        "default on for Llama/Mistral/Qwen2, transformers' forward otherwise)",
    )
    parser.add_argument(
        "--compile-lean",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch executor: torch.compile the lean forward's decoder layer, cached on disk "
        "(env STREAMHOST_COMPILE_LEAN; default per device, engine/lean_compiled.py)",
    )
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        help="prompt tokens prefilled per step, all sequences together (env STREAMHOST_PREFILL_CHUNK; "
        "default per device)",
    )
    parser.add_argument(
        "--engine-cores",
        default=None,
        help="CPUs of the engine-core process: a count or a list such as 0-1 (env STREAMHOST_ENGINE_CORES; "
        "default from the CPU count, docs/architecture.md)",
    )
    parser.add_argument(
        "--omp-spin",
        type=int,
        default=None,
        help="barrier spins of the engine core's OpenMP threads before they sleep, 0 to sleep at once "
        "(env STREAMHOST_OMP_SPIN; default 10000, docs/architecture.md)",
    )
    parser.add_argument(
        "--prefix-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reuse a finished request's KV for the next prompt sharing its prefix: multi-turn chat, "
        "shared system prompts (env STREAMHOST_PREFIX_CACHE; default on, docs/prefix-cache.md)",
    )
    parser.add_argument(
        "--decode-threads",
        type=int,
        default=None,
        help="llama.cpp executor: compute threads for small steps (up to 16 tokens: decoding streams; "
        "env STREAMHOST_DECODE_THREADS; default every engine core; 1 can win where other processes keep "
        "the cores busy: docs/architecture.md)",
    )
    parser.add_argument(
        "--cache-type-k",
        default=None,
        metavar="TYPE",
        help="llama.cpp executor: KV cache type of K cells, llama.cpp's names: f16 (default), bf16, q8_0, q4_0, ... "
        "(env STREAMHOST_CACHE_TYPE_K; engine/executors/llamacpp_kv.py)",
    )
    parser.add_argument(
        "--cache-type-v",
        default=None,
        metavar="TYPE",
        help="llama.cpp executor: KV cache type of V cells; q8_0 halves their memory and decodes about 2x faster "
        "at a few hundred cached tokens, prefill about 2x slower (env STREAMHOST_CACHE_TYPE_V; default f16)",
    )
    parser.add_argument(
        "--flash-attn",
        default=None,
        metavar="auto|on|off",
        help="llama.cpp executor: flash attention (env STREAMHOST_LLAMACPP_FLASH_ATTN; default auto: on for CPU)",
    )
    parser.add_argument(
        "--no-engine-process",
        dest="engine_process",
        action="store_false",
        default=None,
        help="run the engine core in a thread of the server process (debugging; env STREAMHOST_ENGINE_PROCESS=0)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help=f"seconds to finish in-flight requests after SIGTERM (env STREAMHOST_DRAIN_TIMEOUT; default {DEFAULT_DRAIN_TIMEOUT:g})",
    )
    parser.add_argument(
        "--log-level", default=None, choices=("debug", "info", "warning", "error"), help="env LOG_LEVEL (default info)"
    )


def _flag(args: argparse.Namespace | None, name: str):
    return getattr(args, name, None) if args is not None else None


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None:
        return None
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} is not valid: expected true or false")


def _env_number(env: Mapping[str, str], name: str, kind: type, minimum: float) -> int | float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not valid: expected a number >= {minimum:g}") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} is not valid: expected a number >= {minimum:g}")
    return value


def _llamacpp_kv_settings(
    args: argparse.Namespace | None, env: Mapping[str, str]
) -> tuple[str | None, str | None, str | None]:
    """--cache-type-k/-v and --flash-attn (flags > environment), checked before any model loads."""
    from streamhost.engine.executors.llamacpp_kv import check_combination, parse_cache_type, parse_flash_attn

    def pick(flag: str, variable: str, parse) -> str | None:
        raw = _flag(args, flag.lstrip("-").replace("-", "_"))
        source = flag
        if raw is None:
            raw, source = env.get(variable), variable
        if raw is None or raw.strip() == "":
            return None
        try:
            return parse(raw, source)
        except ValueError as err:
            raise SettingsError(str(err)) from None

    type_k = pick("--cache-type-k", "STREAMHOST_CACHE_TYPE_K", parse_cache_type)
    type_v = pick("--cache-type-v", "STREAMHOST_CACHE_TYPE_V", parse_cache_type)
    flash = pick("--flash-attn", "STREAMHOST_LLAMACPP_FLASH_ATTN", parse_flash_attn)
    try:
        check_combination(type_v, flash)
    except ValueError as err:
        raise SettingsError(str(err)) from None
    return type_k, type_v, flash


def _has_option_env(env: Mapping[str, str]) -> bool:
    return any(name.startswith("OPTION_") and len(name) > 7 for name in env)


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> ServerSettings:
    """Resolve the server's settings (see the module docstring for the order). Raises SettingsError."""
    env = dict(os.environ if environ is None else environ)
    model_dir = _flag(args, "model_dir") or env.get("STREAMHOST_MODEL_DIR") or None
    model_dir_path = Path(model_dir).expanduser() if model_dir else None
    if model_dir_path is not None and not model_dir_path.exists():
        raise SettingsError(f"--model-dir {model_dir} does not exist")
    if model_dir_path is not None:
        model_dir_path = model_root(model_dir_path)  # DJL: model.tar.gz holding one folder (mymodel/)
    props_file = model_dir_path / SERVING_PROPERTIES if model_dir_path is not None and model_dir_path.is_dir() else None
    has_props = props_file is not None and props_file.is_file()

    dialect = (
        _flag(args, "dialect")
        or env.get("STREAMHOST_DIALECT")
        or ("lmi" if has_props or _has_option_env(env) else "tgi")
    )
    if dialect not in ("tgi", "lmi"):
        raise SettingsError(f"dialect {dialect!r} is not valid: expected tgi or lmi")

    properties: ServingProperties | None = None
    if dialect == "lmi" or has_props:
        try:
            text = props_file.read_text(encoding="utf-8") if has_props and props_file is not None else None
            properties = ServingProperties.load(text, env)
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read {props_file}: {exc}") from None
        except ServingPropertiesError as exc:
            raise SettingsError(str(exc)) from None

    model_id = _flag(args, "model_id")
    if not model_id and has_props and model_dir_path is not None and properties is not None:
        source = properties.sources.get("option.model_id", SERVING_PROPERTIES)
        origin = str(props_file) if source == SERVING_PROPERTIES else f"the environment variable {source}"
        try:
            model_id = served_model(model_dir_path, properties.model_id, origin)
        except ModelFolderError as exc:
            raise SettingsError(str(exc)) from None
    if not model_id and properties is not None and properties.model_id:
        model_id = properties.model_id
    if not model_id:
        model_id = env.get("HF_MODEL_ID") or None
    if not model_id and model_dir_path is not None:
        model_id = str(model_dir_path)
    model_id = model_id or DEFAULT_MODEL
    if model_id.startswith("s3://"):
        raise SettingsError(
            f"model {model_id!r}: this server loads local folders, .gguf files, model.tar.gz archives and hub ids; "
            "download s3:// artifacts first (the platform does this for endpoints)"
        )
    if model_dir_path is not None and not Path(model_id).is_absolute() and (model_dir_path / model_id).exists():
        model_id = str(model_dir_path / model_id)  # option.model_id relative to the model folder

    # serving.properties options as their OPTION_* names, over the variables (the file wins in LMI).
    lmi_env = {**env, **serving_properties_env(properties)} if properties is not None and has_props else env
    try:
        options = ExecutionOptions.from_env(lmi_env)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    dtype_raw = _flag(args, "dtype")
    source = "--dtype"
    if dtype_raw is None and properties is not None and properties.dtype is not None:
        dtype_raw, source = properties.dtype, "option.dtype"
    dtype = options.dtype
    if dtype_raw is not None:
        try:
            dtype = parse_dtype(dtype_raw, source=source)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    trust = _flag(args, "trust_remote_code")
    if trust is None:
        trust = _env_bool(env, "HF_MODEL_TRUST_REMOTE_CODE")
    if trust is None and properties is not None:
        trust = properties.trust_remote_code
    port = _flag(args, "port")
    if port is None:
        port = _env_number(env, "PORT", int, 1) or _env_number(env, "SAGEMAKER_BIND_TO_PORT", int, 1) or DEFAULT_PORT
    if not 0 <= int(port) <= 65535:
        raise SettingsError(f"port {port} is not valid: expected 0..65535")
    drain = _flag(args, "drain_timeout")
    if drain is None:
        drain = _env_number(env, "STREAMHOST_DRAIN_TIMEOUT", float, 0)
    if drain is not None and drain < 0:
        raise SettingsError(f"--drain-timeout {drain} is not valid: expected seconds >= 0")
    payload_limit = _env_number(env, "PAYLOAD_LIMIT", int, 1)
    shards = _env_number(env, "SM_NUM_GPUS", int, 1)
    load_timeout = properties.model_loading_timeout if properties is not None else None

    executor_raw = _flag(args, "executor") or env.get("STREAMHOST_EXECUTOR")
    try:
        from streamhost.engine.executors import parse_executor

        executor = parse_executor(executor_raw, "--executor" if _flag(args, "executor") else "STREAMHOST_EXECUTOR")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    quantize = env.get("HF_MODEL_QUANTIZE") or None
    if quantize is None and properties is not None:
        quantize = properties.values.get("option.quantize") or None
    quantize = quantize or env.get("OPTION_QUANTIZE") or None

    limit_settings = LimitSettings({name: value for name, value in lmi_env.items() if name in SETTING_NAMES})
    try:
        limit_settings.resolve()  # fail now on a bad value; the model's context length only lowers defaults
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    revision = _flag(args, "revision") or env.get("HF_MODEL_REVISION") or None
    batch_invariant = _env_bool(env, "STREAMHOST_BATCH_INVARIANT")
    compile_step = _flag(args, "compile")
    if compile_step is None:
        compile_step = _env_bool(env, "STREAMHOST_COMPILE")
    lean_forward = _flag(args, "lean_forward")
    if lean_forward is None:
        lean_forward = _env_bool(env, "STREAMHOST_LEAN_FORWARD")
    compile_lean = _flag(args, "compile_lean")
    if compile_lean is None:
        compile_lean = _env_bool(env, "STREAMHOST_COMPILE_LEAN")
    prefill_chunk = _flag(args, "prefill_chunk")
    if prefill_chunk is not None and prefill_chunk < 1:
        raise SettingsError(f"--prefill-chunk {prefill_chunk} is not valid: expected a number >= 1")
    if prefill_chunk is None:
        prefill_chunk = _env_number(env, "STREAMHOST_PREFILL_CHUNK", int, 1)
    cache = env.get("STREAMHOST_CACHE") or None
    prefix_cache = _flag(args, "prefix_cache")
    if prefix_cache is None:
        prefix_cache = _env_bool(env, "STREAMHOST_PREFIX_CACHE")
    engine_process = _flag(args, "engine_process")
    if engine_process is None:
        engine_process = _env_bool(env, "STREAMHOST_ENGINE_PROCESS")
    engine_cores = _flag(args, "engine_cores") or env.get("STREAMHOST_ENGINE_CORES") or None
    if engine_cores is not None:
        from streamhost.engine.core_placement import check_spec

        try:
            check_spec(engine_cores)
        except ValueError as exc:
            source = "--engine-cores" if _flag(args, "engine_cores") else "STREAMHOST_ENGINE_CORES"
            raise SettingsError(str(exc).replace("--engine-cores", source)) from None
    omp_spin = _flag(args, "omp_spin")
    if omp_spin is not None and omp_spin < 0:
        raise SettingsError(f"--omp-spin {omp_spin} is not valid: expected a number >= 0")
    if omp_spin is None:
        omp_spin = _env_number(env, "STREAMHOST_OMP_SPIN", int, 0)
    decode_threads = _flag(args, "decode_threads")
    if decode_threads is not None and decode_threads < 1:
        raise SettingsError(f"--decode-threads {decode_threads} is not valid: expected a number >= 1")
    if decode_threads is None:
        decode_threads = _env_number(env, "STREAMHOST_DECODE_THREADS", int, 1)
    cache_type_k, cache_type_v, flash_attn = _llamacpp_kv_settings(args, env)
    engine = EngineConfig(
        dtype=dtype,
        trust_remote_code=bool(trust),
        revision=revision,
        limit_settings=limit_settings,
        model_id=model_id,
        tensor_parallel_degree=options.tensor_parallel_degree,
        batch_invariant=bool(batch_invariant),
        compile=compile_step,
        lean_forward=lean_forward,
        compile_lean=compile_lean,
        prefill_chunk=None if prefill_chunk is None else int(prefill_chunk),
        hub_token=env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None,
        cache_dir=Path(cache).expanduser() if cache else default_cache_dir(),
        executor=executor,
        quantize=quantize,
        engine_process=engine_process is not False,
        engine_cores=engine_cores,
        omp_spin=None if omp_spin is None else int(omp_spin),
        prefix_cache=prefix_cache is not False,
        decode_threads=None if decode_threads is None else int(decode_threads),
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        flash_attn=flash_attn,
    )

    return ServerSettings(
        model_id=model_id,
        dialect=dialect,
        host=_flag(args, "host") or DEFAULT_HOST,
        port=int(port),
        revision=revision,
        dtype=dtype,
        trust_remote_code=bool(trust),
        quantize=quantize,
        executor=executor,
        num_shards=int(shards) if shards is not None else None,
        model_dir=model_dir_path,
        properties=properties,
        drain_timeout=DEFAULT_DRAIN_TIMEOUT if drain is None else float(drain),
        load_timeout=float(load_timeout) if load_timeout else None,
        payload_limit=int(payload_limit) if payload_limit is not None else 2_000_000,
        compute_type=env.get("COMPUTE_TYPE") or None,
        log_level=(_flag(args, "log_level") or env.get("LOG_LEVEL") or "info").lower(),
        engine=engine,
    )


def serving_properties_env(properties: ServingProperties) -> dict[str, str]:
    """``option.x_y`` -> ``OPTION_X_Y`` for every option the file set, to merge over the variables."""
    out: dict[str, str] = {}
    for key, value in properties.values.items():
        if key.startswith("option.") and properties.sources.get(key) == "serving.properties":
            out["OPTION_" + key[len("option.") :].upper()] = value
    return out
