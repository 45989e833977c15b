"""Every model and data source a command names, found, downloaded or converted in one place.

    find_model(spec, ...) -> ModelSource   what -e / --model names, made ready to read: the file
                                            found (fetched or converted if it must be), its shape
                                            read from the header alone
    source.load(device) -> GPT2            the parameters read (or initialised) onto a device
    find_data(train, val, data_dir, log)   the train and val shard patterns, tinyshakespeare
                                            prepared when the defaults are missing

A model spec is one of
    d6, d12, d24, ...           a fresh GPT-2 of that depth (train_gpt2.cu's -e d12), seeded
    gpt2, gpt2-medium, ...      the hub's GPT-2 sizes: llm.c's file in the data dir
                                (gpt2_124M.bin, gpt2_350M.bin, ...), converted from Hugging Face
                                when missing (the hf extra)
    a file                      an llm.c model checkpoint (float32 or bfloat16)
    a folder                    a Hugging Face GPT-2 (config.json + model.safetensors)
    None                        llmnb-train's default: gpt2_124M.bin here or in the data dir, else
                                fetched from llm.c's starter pack

find_model reads headers only, so a caller can check the memory a model needs (memory.py)
before anything of its size is allocated.
"""
import glob
import os
import re
from dataclasses import dataclass

from . import convert, download, prepro
from .config import GPT2Config
from .formats import check_finite_params, read_checkpoint, read_checkpoint_config, write_checkpoint
from .model import GPT2, init_params

STARTER_PACK_URL = "https://huggingface.co/datasets/karpathy/llmc-starter-pack/resolve/main/"
DEFAULT_INIT = "gpt2_124M.bin"
FRESH = r"d(\d+)"  # d6, d12, d24, ...: a fresh model of that depth
SPECS = ("an llm.c checkpoint, a Hugging Face GPT-2 folder, gpt2/gpt2-medium/gpt2-large/gpt2-xl, "
         "or d6/d12/d24/... for a fresh model")


class ModelUnavailable(RuntimeError):
    """A pretrained model that could not be had (offline, no hf extra): a caller may start from a
    fresh model instead."""


@dataclass(frozen=True)
class ModelSource:
    """A model ready to read: `name` (the spec it came from, or "d12" when a fresh model stands in
    for one that could not be had), its `config`, and where its parameters come from: `path` (an
    llm.c file), `folder` (a Hugging Face folder), or neither (a fresh init of `seed`)."""
    name: str
    config: GPT2Config
    path: str = None
    folder: str = None
    seed: int = 0

    @property
    def fresh(self):
        return self.path is None and self.folder is None

    def describe(self):
        c = self.config
        if self.fresh:
            return (f"initialising a fresh GPT-2 {self.name}: {c.num_layers} layers, {c.num_heads} heads, "
                    f"{c.channels} channels (seed {self.seed})")
        return f"loaded {self.path or self.folder}"

    def read(self, log=print):
        """-> (config, flat float32 params) on the host."""
        if self.folder is not None:
            config, params = convert.read_hf(self.folder, log)
            check_finite_params(self.folder, params)  # (read_checkpoint checks an llm.c file's)
            return config, params
        if self.path is not None:
            return read_checkpoint(self.path)
        return self.config, init_params(self.config, seed=self.seed)

    def load(self, device="cpu", log=print, precision="fp32"):
        """The model on device (its parameters handed over, not copied), its matmuls in precision."""
        config, params = self.read(log)
        return GPT2(config, params, device=device, copy=False, precision=precision)


def find_model(spec, data_dir="data", log=print, *, seed=0, flag="--model", fresh_instead=None):
    """The ModelSource of spec (see the module's docstring); flag names the option in messages.
    fresh_instead (llmnb-train: "d12"): a pretrained model that cannot be had is replaced by a
    fresh model of that name, with one line saying why; otherwise ModelUnavailable is raised."""
    try:
        return _find(spec, data_dir, log, seed, flag)
    except ModelUnavailable as e:
        if fresh_instead is None:
            raise
        log(f"{e}; training a fresh {fresh_instead} model instead")
        return _find(fresh_instead, data_dir, log, seed, flag)


def _find(spec, data_dir, log, seed, flag):
    m = re.fullmatch(FRESH, spec) if spec is not None else None
    if m:
        return ModelSource(spec, GPT2Config.depth(int(m.group(1))), seed=seed)
    if spec in convert.HF_GPT2_FILES:  # gpt2, gpt2-medium...: llm.c's file in data_dir, else from HF
        try:
            path = pretrained_checkpoint(spec, data_dir, log)
        except convert.ConvertError as e:
            raise ModelUnavailable(f"could not get {spec} ({e})") from None
        return ModelSource(spec, read_checkpoint_config(path), path=path)
    if spec is None:
        path = default_checkpoint(data_dir, log)
        return ModelSource(DEFAULT_INIT, read_checkpoint_config(path), path=path)
    if os.path.isdir(spec):
        log(f"{spec}: a folder: reading it as a Hugging Face GPT-2")
        return ModelSource(spec, convert.read_hf_config(spec), folder=spec)
    if not os.path.exists(spec):
        # -e names a model among data files and fresh depths; --model only ever a model
        noun = "model file" if flag == "-e" else "file"
        raise FileNotFoundError(f"{spec}: no such {noun} ({flag} takes {SPECS})")
    return ModelSource(spec, read_checkpoint_config(spec), path=spec)


def default_checkpoint(data_dir, log=print):
    """llmnb-train's default model file: gpt2_124M.bin here, else in data_dir, else fetched there
    from llm.c's starter pack (ModelUnavailable when that fails)."""
    if os.path.exists(DEFAULT_INIT):
        return DEFAULT_INIT
    path = os.path.join(data_dir, DEFAULT_INIT)
    if not os.path.exists(path):
        # offline, this is one line (the caller's): no line before the server answers, none per retry
        try:
            download.download(STARTER_PACK_URL + DEFAULT_INIT, path, retries=1, timeout=20, quiet=True,
                              on_start=lambda: log(f"{DEFAULT_INIT} not found: fetching llm.c's starter pack to {path}"))
        except download.DownloadError as e:
            raise ModelUnavailable(f"{DEFAULT_INIT} not found and llm.c's starter pack could not be fetched "
                                   f"({e.reason})") from None
    return path


def pretrained_checkpoint(name, data_dir, log=print):
    """The llm.c checkpoint of the hub's `name` (gpt2, gpt2-medium, ...) in data_dir, converted
    from Hugging Face when absent (llm.c's starter pack holds only gpt2_124M.bin)."""
    path = os.path.join(data_dir, convert.HF_GPT2_FILES[name])
    if not os.path.exists(path):
        config, params = convert.read_hf(name, log)
        os.makedirs(data_dir, exist_ok=True)
        write_checkpoint(path, config, params)
        log(f"converted Hugging Face's {name} to {path}")
    return path


def find_data(train, val, data_dir, log=print):
    """(train pattern, val pattern): the given ones, or tinyshakespeare's in data_dir, prepared
    (llmnb-prepro tinyshakespeare) when those are missing."""
    default_train, default_val = prepro.tinyshakespeare_paths(data_dir)
    train = train or default_train
    val = val or default_val
    if (train == default_train and not glob.glob(train)) or (val == default_val and not glob.glob(val)):
        log("tinyshakespeare token files not found: preparing them (llmnb-prepro tinyshakespeare)")
        prepro.ensure_tinyshakespeare(data_dir, log=log)
    return train, val
