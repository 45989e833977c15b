"""llmnb-convert: GPT-2 weights between Hugging Face and llm.c's checkpoint format, both ways.

    Hugging Face -> llm.c   what llm.c's train_gpt2.py does when it writes gpt2_124M.bin from HF's
                            `gpt2`: config.json + model.safetensors (read with the safetensors
                            package's NumPy API, downloaded with huggingface_hub for a hub name),
                            Conv1D weights (in, out) transposed to llm.c's (out, in), the
                            vocabulary padded with zero rows from V to Vp (a multiple of 128).
    llm.c -> Hugging Face   what llm.c's dev/eval/export_hf.py writes: config.json, a
                            model.safetensors that GPT2LMHeadModel.from_pretrained loads (the head
                            tied to wte, so it is not stored), and GPT-2's tokenizer files
                            (vocab.json, merges.txt) when tiktoken's gpt2 files can be read.

Needs the `hf` extra (safetensors, huggingface_hub); transformers is not needed to convert.
"""
import argparse
import importlib
import json
import os
import sys

import numpy as np

from .config import GPT2Config, Tensors, param_shapes
from .fileio import FormatError, atomic_write
from .formats import bf16_to_fp32, read_checkpoint, write_checkpoint
from .kernels import LAYERNORM_EPS

# the hub's GPT-2 sizes and the file names llm.c's train_gpt2.py gives them
HF_GPT2_FILES = {"gpt2": "gpt2_124M.bin", "gpt2-medium": "gpt2_350M.bin",
                 "gpt2-large": "gpt2_774M.bin", "gpt2-xl": "gpt2_1558M.bin"}
HF_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]

# HF GPT-2 parameter name (without the "transformer." prefix) of each llm.c tensor; per-layer names
# hold {l}. transpose: HF's Conv1D stores (in, out), llm.c's matmuls (out, in).
HF_NAMES = {  # llm.c name: (HF name, transpose)
    "wte": ("wte.weight", False), "wpe": ("wpe.weight", False),
    "ln1w": ("h.{l}.ln_1.weight", False), "ln1b": ("h.{l}.ln_1.bias", False),
    "qkvw": ("h.{l}.attn.c_attn.weight", True), "qkvb": ("h.{l}.attn.c_attn.bias", False),
    "attprojw": ("h.{l}.attn.c_proj.weight", True), "attprojb": ("h.{l}.attn.c_proj.bias", False),
    "ln2w": ("h.{l}.ln_2.weight", False), "ln2b": ("h.{l}.ln_2.bias", False),
    "fcw": ("h.{l}.mlp.c_fc.weight", True), "fcb": ("h.{l}.mlp.c_fc.bias", False),
    "fcprojw": ("h.{l}.mlp.c_proj.weight", True), "fcprojb": ("h.{l}.mlp.c_proj.bias", False),
    "lnfw": ("ln_f.weight", False), "lnfb": ("ln_f.bias", False),
}
PER_LAYER = {name for name, (hf, _) in HF_NAMES.items() if "{l}" in hf}
# buffers some HF checkpoints carry (the causal mask), not parameters
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")

# GPT-2's tokenizer files, as tiktoken's gpt2 encoding reads them (HF's vocab.json and merges.txt
# are the same files under other names)
GPT2_ENCODER_JSON = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
GPT2_VOCAB_BPE = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")
GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256


class ConvertError(ValueError):
    """A model that cannot be converted, or that cannot be had (one line, naming the file)."""


def _need(module):
    """Import an optional dependency of the `hf` extra, with a clear error when absent."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConvertError(f"this needs the '{module.split('.')[0]}' package: "
                           "pip install 'llmnb[hf]'") from None


# ----------------------------------------------------------------------------------------------
# Hugging Face -> llm.c

def _log(msg):
    print(msg, flush=True)


def download_hf(name, log=_log):
    """A hub model id (gpt2, gpt2-medium, user/model...) -> the local folder of its files."""
    hub = _need("huggingface_hub")
    log(f"fetching {name} from the Hugging Face hub (config.json, model.safetensors)")
    try:
        return hub.snapshot_download(repo_id=name, allow_patterns=HF_FILES)
    except Exception as e:  # offline, unknown repo, ...: one line
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise ConvertError(f"could not download {name} from the Hugging Face hub: {msg}") from None


def config_from_hf(path, hf):
    """config.json (a dict read from `path`) -> GPT2Config, refusing what llm.c's GPT-2 is not."""
    def get(key, *alternatives):
        for k in (key,) + alternatives:
            if k in hf:
                return hf[k]
        raise ConvertError(f"{path}: no '{key}' in the config")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ConvertError(f"{path}: model_type {hf['model_type']!r} is not GPT-2")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConvertError(f"{path}: activation_function {act!r}: llm.c's GPT-2 uses the tanh GELU "
                           "(gelu_new)")
    eps = hf.get("layer_norm_epsilon", LAYERNORM_EPS)
    if abs(eps - LAYERNORM_EPS) > 1e-12:
        raise ConvertError(f"{path}: layer_norm_epsilon {eps}: llm.c's layernorm uses {LAYERNORM_EPS}")
    n_inner = hf.get("n_inner")
    C = int(get("n_embd", "hidden_size"))
    if n_inner not in (None, 4 * C):
        raise ConvertError(f"{path}: n_inner {n_inner}: llm.c's MLP is 4 * n_embd = {4 * C} wide")
    for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if hf.get(key, ok) != ok:
            raise ConvertError(f"{path}: {key} = {hf[key]}: llm.c's GPT-2 has {key} = {ok}")
    V = int(get("vocab_size"))
    try:
        return GPT2Config(max_seq_len=int(get("n_positions", "n_ctx")), vocab_size=V,
                          padded_vocab_size=GPT2Config.pad_vocab(V), num_layers=int(get("n_layer")),
                          num_heads=int(get("n_head")), channels=C)
    except ValueError as e:
        raise ConvertError(f"{path}: {e}") from None


def _safetensors_files(folder):
    """The weight files of an HF folder: model.safetensors, or the shards its index names."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return [single]
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, s) for s in shards]
    raise ConvertError(f"{folder}: no model.safetensors (nor model.safetensors.index.json); "
                       "only safetensors weights are read")


def _read_bf16_safetensors(path):
    """{name: float32 array} of a safetensors file holding bfloat16 tensors (llm.c's export_hf.py
    writes bfloat16 by default), which safetensors' NumPy API cannot load: NumPy has no bfloat16.
    The format: a little-endian u64 header length, a JSON header (dtype, shape, data_offsets of
    each tensor), then the data."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"BF16": "<u2", "F16": "<f2", "F32": "<f4"}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ConvertError(f"{path}: tensor '{name}' has dtype {info['dtype']} (readable: BF16, F16, F32)")
        begin, end = info["data_offsets"]
        a = np.frombuffer(data[begin:end], dtype=dtypes[info["dtype"]])
        a = bf16_to_fp32(a) if info["dtype"] == "BF16" else a.astype(np.float32)
        out[name] = a.reshape(info["shape"])
    return out


def read_hf_tensors(folder):
    """{name without 'transformer.': float32 array} of an HF folder's safetensors files."""
    st = _need("safetensors.numpy")
    tensors = {}
    for path in _safetensors_files(folder):
        try:
            try:
                loaded = st.load_file(path)
            except TypeError as e:  # "data type 'bfloat16' not understood"
                if "bfloat16" not in str(e):
                    raise
                loaded = _read_bf16_safetensors(path)
        except ConvertError:
            raise
        except Exception as e:  # truncated, or not safetensors
            msg = " ".join(str(e).split())[:200] or type(e).__name__
            raise ConvertError(f"{path}: cannot read as safetensors with NumPy: {msg}") from None
        for name, array in loaded.items():
            name = name[len("transformer."):] if name.startswith("transformer.") else name
            tensors[name] = (path, array)
    return tensors


def params_from_hf(folder, config, tensors):
    """llm.c's flat float32 parameters from HF tensors: transposed Conv1D weights, wte padded to Vp."""
    p = Tensors.allocate(param_shapes(config))
    V, L = config.vocab_size, config.num_layers
    used = set()
    for name, (hf, transpose) in HF_NAMES.items():
        for l in (range(L) if name in PER_LAYER else [None]):
            key = hf.format(l=l)
            if key not in tensors:
                raise ConvertError(f"{folder}: no tensor '{key}' in the safetensors weights")
            path, array = tensors[key]
            array = array.T if transpose else array
            dst = getattr(p, name) if l is None else getattr(p, name)[l]
            want = (V,) + dst.shape[1:] if name == "wte" else dst.shape
            if array.shape != want:
                raise ConvertError(f"{path}: '{key}' has shape {array.shape}, config.json implies {want}")
            dst[:want[0]] = array  # wte: rows V..Vp stay zero, as llm.c's write_model pads
            used.add(key)
    if "lm_head.weight" in tensors:  # an untied head would be silently dropped: refuse it
        path, head = tensors["lm_head.weight"]
        if head.shape != (V, config.channels) or not np.array_equal(head, p.wte[:V]):
            raise ConvertError(f"{path}: lm_head.weight differs from wte.weight; llm.c's GPT-2 ties them")
        used.add("lm_head.weight")
    extra = [k for k in tensors if k not in used and not k.endswith(HF_BUFFERS)]
    if extra:
        raise ConvertError(f"{folder}: tensors llm.c's GPT-2 has no place for: {', '.join(sorted(extra)[:5])}")
    return p.memory


def is_local_path(source):
    """Whether source can only be a path, never a hub id (gpt2, user/model): ./x, ../x, /x, ~/x,
    x/, a/b/c, or an existing file."""
    return (source.startswith((".", "/", "~", os.sep)) or source.endswith(("/", os.sep))
            or os.path.exists(source) or source.count("/") > 1)


def read_hf_config(folder):
    """The GPT2Config of a local HF GPT-2 folder, from its config.json alone."""
    cfg_path = os.path.join(folder, "config.json")
    try:
        with open(cfg_path) as f:
            hf_config = json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{cfg_path}: no such file (an HF model folder has a config.json)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConvertError(f"{cfg_path}: not readable JSON: {e}") from None
    return config_from_hf(cfg_path, hf_config)


def read_hf(source, log=_log):
    """An HF GPT-2 (a local folder, or a hub id to download) -> (GPT2Config, flat float32 params)."""
    if not os.path.isdir(source) and is_local_path(source):
        what = "a file, not a folder" if os.path.exists(source) else "no such folder"
        raise ConvertError(f"{source}: {what} (a Hugging Face GPT-2 folder holds config.json and "
                           "model.safetensors; a hub id looks like gpt2 or user/model)")
    folder = source if os.path.isdir(source) else download_hf(source, log)
    config = read_hf_config(folder)
    return config, params_from_hf(folder, config, read_hf_tensors(folder))


# ----------------------------------------------------------------------------------------------
# llm.c -> Hugging Face

def hf_config(config):
    """config.json of a GPT2LMHeadModel with llm.c's GPT-2 shape (dropout as HF's defaults)."""
    eot = GPT2_EOT if config.vocab_size == GPT2_VOCAB_SIZE else config.vocab_size - 1
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.max_seq_len, "n_ctx": config.max_seq_len,
        "n_embd": config.channels, "n_layer": config.num_layers, "n_head": config.num_heads,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": LAYERNORM_EPS,
        "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }


def hf_tensors(config, params):
    """HF GPT2LMHeadModel's state dict (float32, Conv1D layout, wte unpadded, head tied: not stored)."""
    p = Tensors(np.asarray(params, dtype=np.float32).reshape(-1), param_shapes(config))
    out = {}
    for name, (hf, transpose) in HF_NAMES.items():
        for l in (range(config.num_layers) if name in PER_LAYER else [None]):
            t = getattr(p, name) if l is None else getattr(p, name)[l]
            t = t[:config.vocab_size] if name == "wte" else t
            out["transformer." + hf.format(l=l)] = np.ascontiguousarray(t.T if transpose else t)
    return out


def gpt2_tokenizer_files():
    """{file name: bytes} of GPT-2's HF tokenizer (vocab.json, merges.txt, tokenizer_config.json),
    read through tiktoken's cache; raises RuntimeError when they cannot be had (e.g. offline)."""
    try:
        from tiktoken.load import read_file_cached
        vocab = read_file_cached(*GPT2_ENCODER_JSON)
        merges = read_file_cached(*GPT2_VOCAB_BPE)
    except Exception as e:
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise RuntimeError(f"GPT-2's tokenizer files are not at hand ({msg})") from None
    special = "<|endoftext|>"
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False,
              "bos_token": special, "eos_token": special, "unk_token": special}
    return {"vocab.json": vocab, "merges.txt": merges,
            "tokenizer_config.json": json.dumps(config, indent=2).encode()}


def write_hf(folder, config, params, log=_log):
    """Write an HF GPT-2 folder: config.json, model.safetensors, and the tokenizer when at hand."""
    st = _need("safetensors.numpy")
    os.makedirs(folder, exist_ok=True)
    with atomic_write(os.path.join(folder, "model.safetensors")) as f:
        f.write(st.save(hf_tensors(config, params), metadata={"format": "pt"}))
    with atomic_write(os.path.join(folder, "config.json")) as f:
        f.write(json.dumps(hf_config(config), indent=2).encode())
    if config.vocab_size != GPT2_VOCAB_SIZE:
        log(f"no tokenizer files: the model's vocabulary ({config.vocab_size}) is not GPT-2's")
        return
    try:
        files = gpt2_tokenizer_files()
    except RuntimeError as e:
        log(f"no tokenizer files: {e}")
        return
    for name, data in files.items():
        with atomic_write(os.path.join(folder, name)) as f:
            f.write(data)


# ----------------------------------------------------------------------------------------------
# command line

def build_parser():
    p = argparse.ArgumentParser(
        prog="llmnb-convert",
        description="Convert GPT-2 weights between Hugging Face and llm.c's checkpoint format. "
                    "Needs the hf extra: pip install 'llmnb[hf]'.",
        epilog="examples:\n"
               "  llmnb-convert --from-hf gpt2 --out gpt2_124M.bin       (downloads from the hub)\n"
               "  llmnb-convert --from-hf ./my_hf_model --out model.bin   (a local HF folder)\n"
               "  llmnb-convert --model out/model.bin --to-hf ./exported  (loads with "
               "GPT2LMHeadModel.from_pretrained)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--from-hf", metavar="NAME|DIR", help="an HF GPT-2: a hub id (gpt2, gpt2-medium, gpt2-large, "
                                            "gpt2-xl, ...) or a local folder with config.json + model.safetensors")
    a("--out", metavar="FILE", help="the llm.c checkpoint to write (with --from-hf)")
    a("--dtype", default="float32", choices=["float32", "bfloat16"],
      help="checkpoint precision with --from-hf (default: float32, llm.c's version 3)")
    a("--model", metavar="FILE", help="an llm.c checkpoint to export (with --to-hf)")
    a("--to-hf", metavar="DIR", help="the HF folder to write (config.json, model.safetensors, tokenizer)")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if bool(args.from_hf) == bool(args.model):
        p.error("give either --from-hf NAME|DIR --out FILE, or --model FILE --to-hf DIR")
    if args.from_hf and not args.out:
        p.error("--from-hf needs --out FILE")
    if args.model and not args.to_hf:
        p.error("--model needs --to-hf DIR")
    try:
        if args.from_hf:
            config, params = read_hf(args.from_hf)
            write_checkpoint(args.out, config, params, dtype=args.dtype)
            print(f"wrote {args.out}: {config.num_layers} layers, {config.num_heads} heads, "
                  f"{config.channels} channels, vocab {config.vocab_size} padded to {config.padded_vocab_size}")
        else:
            config, params = read_checkpoint(args.model)
            write_hf(args.to_hf, config, params)
            print(f"wrote {args.to_hf}: config.json, model.safetensors "
                  f"({config.num_layers} layers, {config.channels} channels, vocab {config.vocab_size})")
    except (ConvertError, FormatError, OSError) as e:
        print(f"llmnb-convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
