"""The GPT-2 tokenizer, as in llm.c's llmc/tokenizer.h, plus tiktoken for encoding.

A Tokenizer is a table of token byte strings (id -> bytes) and the EOT token id. It comes either
from llm.c's gpt2_tokenizer.bin (decode only, like the C) or from tiktoken's gpt2 encoding
(decode and encode).
"""
import codecs
import os

from . import formats

TOKENIZER_FILENAME = "gpt2_tokenizer.bin"


class Tokenizer:
    """id -> bytes table, eot_token, and (when tiktoken-backed) an encoder."""

    def __init__(self, tokens, eot_token, encoding=None, source="<memory>"):
        if not 0 <= eot_token < len(tokens):
            raise ValueError(f"{source}: eot token {eot_token} outside the vocabulary of {len(tokens)}")
        self.token_table = list(tokens)
        self.eot_token = int(eot_token)
        self.source = source
        self._encoding = encoding

    @classmethod
    def from_file(cls, path):
        """llm.c's gpt2_tokenizer.bin (decode only)."""
        tokens, eot_token = formats.read_tokenizer(path)
        return cls(tokens, eot_token, source=os.fspath(path))

    @classmethod
    def tiktoken(cls, name="gpt2"):
        """tiktoken's encoding (gpt2 by default): decode and encode."""
        enc = get_tiktoken_encoding(name)
        tokens = [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]
        return cls(tokens, enc.eot_token, encoding=enc, source=f"tiktoken:{name}")

    @property
    def vocab_size(self):
        return len(self.token_table)

    @property
    def can_encode(self):
        return self._encoding is not None

    def decode(self, token_id):
        """The bytes of one token (like tokenizer_decode, but an invalid id raises)."""
        if not 0 <= token_id < len(self.token_table):
            raise ValueError(f"invalid token id {token_id} (vocab size {len(self.token_table)})")
        return self.token_table[token_id]

    def encode(self, text):
        """Token ids of text, with tiktoken's encode_ordinary (special tokens are plain text)."""
        if self._encoding is None:
            raise RuntimeError(f"tokenizer from {self.source} can only decode; "
                               "use Tokenizer.tiktoken() to encode text")
        return self._encoding.encode_ordinary(text)

    def __repr__(self):
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, eot_token={self.eot_token})"


def get_tiktoken_encoding(name="gpt2"):
    """tiktoken.get_encoding, with a clear error when its data can't be fetched (e.g. offline)."""
    try:
        import tiktoken
        return tiktoken.get_encoding(name)
    except Exception as e:  # tiktoken raises requests/OS/value errors when offline
        msg = " ".join(str(e).split()) or type(e).__name__
        raise RuntimeError(f"could not load tiktoken's {name!r} encoding ({msg}); it needs the network "
                           "once, or TIKTOKEN_CACHE_DIR pointing at a cache that holds it") from e


def load_tokenizer(data_dir="data", encode=False):
    """<data_dir>/gpt2_tokenizer.bin if it exists, else tiktoken's gpt2.

    encode=True: the file's table (what llm.c decodes with) plus tiktoken's gpt2 encoder, which
    must agree with it (same number of tokens, same EOT id, same bytes for each token).
    """
    path = os.path.join(data_dir, TOKENIZER_FILENAME)
    if not os.path.exists(path):
        return Tokenizer.tiktoken()
    tok = Tokenizer.from_file(path)
    if encode:
        enc = get_tiktoken_encoding("gpt2")
        if enc.n_vocab != tok.vocab_size or enc.eot_token != tok.eot_token or \
                any(enc.decode_single_token_bytes(i) != t for i, t in enumerate(tok.token_table)):
            raise ValueError(f"{path}: its tokens differ from tiktoken's gpt2 encoding, so text cannot "
                             "be encoded for it")
        tok._encoding = enc
    return tok


# ----------------------------------------------------------------------------
# printing generated tokens

def _is_print_or_space(byte):
    # C locale isprint(): 0x20..0x7e; isspace(): ' ', \t \n \v \f \r
    return 0x20 <= byte <= 0x7E or 0x09 <= byte <= 0x0D


class StreamDecoder:
    """Turns the bytes of successive tokens into text for printing as they are generated.

    A UTF-8 character split across tokens is kept together (decoding each token alone would
    mangle it), so unlike safe_printf a lone byte >= 0x80 is kept as part of such a character;
    lone ASCII control bytes are dropped as safe_printf drops them.
    """

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece):
        if len(piece) == 1 and piece[0] < 0x80 and not _is_print_or_space(piece[0]):
            return ""
        return self._decoder.decode(piece)

    def flush(self):
        return self._decoder.decode(b"", final=True)
