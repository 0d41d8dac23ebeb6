"""make_tokenizer_corpus.py - golden token ids for tests/test_tokenizer.c.

Writes tests/data/tokenizer_corpus.json: >= 1,000 texts (hand-written edge
cases plus a seeded random mix of scripts, emoji, marks, digits, punctuation,
whitespace and control characters) with the ids transformers' slow
CLIPTokenizer gives them:
  "ids"    - tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids,
             what StableDiffusionPipeline feeds the text encoder;
  "tokens" - the untruncated ids without BOS/EOS, so a test can tell a
             tokenization bug from a truncation bug.
"variants" holds smaller sets for tokenizers whose pad token is "!" (SD-2.x),
each with the exact text of its tokenizer_config.json / special_tokens_map.json.

ftfy must NOT be importable: with ftfy CLIPTokenizer runs ftfy.fix_text
(mojibake repair, HTML unescaping, ...) instead of the BasicTokenizer cleanup
that perflow implements, and diffusers does not install ftfy. The goldens are
those of a stock `pip install diffusers transformers` environment.

Texts never contain U+0000: the C API takes NUL-terminated strings (and
BasicTokenizer drops U+0000 anyway).

Run:  .venv/bin/python tests/reference/make_tokenizer_corpus.py
      .venv/bin/python tests/reference/make_tokenizer_corpus.py --unicode-check
        compares the system's libutf8proc with Python's unicodedata and the regex
        module over every code point and prints the unicode15_new table of
        engine/models/tokenizer.c (run it when utf8proc is upgraded).
"""
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_vocab  # noqa: E402

assert importlib.util.find_spec("ftfy") is None, (
    "ftfy is installed: CLIPTokenizer would use ftfy.fix_text instead of BasicTokenizer; "
    "uninstall it (pip uninstall ftfy) to generate these goldens"
)

# engine/models/tokenizer.c follows Python 3.11's Unicode database (see its header comment).
assert unicodedata.unidata_version == "14.0.0", (
    f"Python {sys.version.split()[0]} has Unicode {unicodedata.unidata_version}; run with the reference "
    "venv's Python 3.11 (Unicode 14.0.0), which engine/models/tokenizer.c matches"
)

import transformers  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

VERSION = 1
SCRIPT = "tests/reference/make_tokenizer_corpus.py"
OUT = os.path.join(clip_vocab.ROOT, "tests", "data", "tokenizer_corpus.json")
MAX_LENGTH = 77
N_RANDOM = 900

# ---------------------------------------------------------------- hand-written cases
EDGE = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "a photo of an astronaut riding a horse on mars",
    "masterpiece, best quality, ultra-detailed, 8k, trending on artstation, by greg rutkowski",
    "portrait of a woman, (smiling:1.3), [bokeh], {cinematic lighting}, <lora:foo:0.8>",
    # whitespace and control characters
    "\t tabs\tand\nnewlines\r\nand\rreturns \n",
    "vertical\x0btab form\x0cfeed file\x1cseparator unit\x1fsep nel\x85end",
    "bell\x07 escape\x1b[31m red \x7f del \x01\x02\x03",
    "nbsp\xa0here, ideographic\u3000space, thin\u2009space, narrow\u202fnbsp, ogham\u1680mark",
    "line\u2028separator paragraph\u2029separator",
    "zero\u200bwidth\u200cnon\u200djoiner\u2060word\ufeffbom",
    "soft\xadhyphen bidi\u202eoverride\u202c lrm\u200e",
    "replacement \ufffd char \ufffd\ufffd",
    "private use \ue000\uf8ff \U000f0000 nonchar \ufffe\uffff \U0010fffe",
    "   leading and trailing spaces   ",
    "many     spaces\t\t\tbetween",
    # apostrophes and contractions
    "it's, don't, you're, we've, I'm, they'll, he'd",
    "IT'S DON'T YOU'RE WE'VE I'M THEY'LL HE'D",
    "It'S dOn'T yOu'Re We'Ve i'M ThEy'Ll hE'd",
    "'s 't 're 've 'm 'll 'd ''s '''t 'x 'sss 'reve",
    "rock 'n' roll, o'clock, ma'am, y'all'd've",
    "curly \u2019s quotes \u2018m\u2019 and \u201cdouble\u201d",
    "long s: it'\u017f, '\u017ft, <|\u017ftartoftext|>",
    "\u2019re \u02bcs \uff07s",
    # special tokens written in the text
    "<|startoftext|>",
    "<|endoftext|>",
    "a <|startoftext|> b <|endoftext|> c",
    "x<|endoftext|>y<|startoftext|>z",
    "<|ENDOFTEXT|> <|StartOfText|> <|endoftext|",
    "!<|endoftext|> <|endo\x01ftext|> <|endoftext|>\u0338 <\u0338|endoftext|>",
    "<|startoftext|><|startoftext|><|endoftext|><|endoftext|>",
    "<|endoftext|>" * 50,
    # punctuation runs and symbols
    "!!! ??? ... ,,, ;;; ::: --- ___ *** ### @@@ $$$ %%% ^^^ &&& (((",
    "hello!world?foo.bar,baz;qux:quux",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "\u00a1\u00bf\u00ab\u00bb\u2026\u2014\u2013\u00b7\u2022\u00a7\u00b6\u2020\u2021\u2030",
    "\u00a9 \u00ae \u2122 \u00b0C \u00b1 \u00d7 \u00f7 \u221e \u2248 \u2260 \u2264 \u2265 \u221a \u2211 \u220f",
    "$100 \u20ac200 \u00a3300 \u00a5400 \u20b9500 \u20bf600",
    # digits and numbers
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 2024",
    "3.14159265358979323846264338327950288419716939937510",
    "12345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "1,000,000 1.5e10 0x1F -42 +7 50% 1/2 3:45pm",
    "\u00bd \u00bc \u00be \u2153 \u2155 \u00b2 \u00b3 \u00b9 \u2070 \u2074 \u2081 \u2082",
    "\u0661\u0662\u0663 \u0967\u0968\u0969 \u0e51\u0e52\u0e53 \uff11\uff12\uff13 \u2160\u2161\u2162 \u2460\u2461\u2462",
    "abc123def456 x2 4k 8K 1080p 16:9 v1.5",
    # case mapping
    "\u0130stanbul \u0130 I\u0307 DIYARBAKIR \u0131\u0130iI",
    "\u039f\u0394\u039f\u03a3 \u039f\u0394\u039f\u03a3'S \u03a3 \u03a3\u03a3 A\u03a3 A\u03a3B A\u03a3. \u03a3A",
    "\u1f08\u1f88 \u1fbc \u01c5 \u01c8 \u01cb \u01f2 \u1e9e \u00df \u212a \u212b \u2126",
    "\u0410\u0411\u0412 \u0413\u0414\u0415 \u041f\u0420\u0418\u0412\u0415\u0422 \u041c\u0418\u0420",
    "\u0531\u0532\u0533 \u10a0\u10a1 \u13a0\u13a1 \u2c00\u2c01 \ua640\ua641 \U00010400\U00010401",
    "\u24b6\u24b7\u24b8 \u24d0\u24d1 \U0001f130\U0001f131 \u2160\u2170 \u00aa\u00ba \u02b0\u02b1",
    "ALL CAPS PROMPT WITH MANY WORDS FOR A LION",
    # combining marks and normalisation
    "caf\u00e9 cafe\u0301 CAF\u00c9 CAFE\u0301",
    "\u00c5ngstr\u00f6m A\u030angstro\u0308m \u212bngstr\u00f6m",
    "e\u0301\u0302\u0303\u0304 a\u0323\u0302 a\u0302\u0323 \u1ea0\u0302",
    "\u1100\u1161\u11a8 \uac01 \u1100\u1161 \uac00\u11a8",
    "\u0915\u093c \u0958 \u0928\u093c \u0929",
    "\u05e9\u05c1 \ufb2a \u05e9\u05bc\u05c1 \ufb2c",
    "\u0301 leading combining, \u0338=, <\u0338, =\u0338, >\u0338",
    "\uf900 \uf901 \ufa10 \U0002f800 \U0002f801 compat ideographs",
    "\u1e9b\u0323 \u0071\u0307\u0323 \u00e5\u0301",
    "Zalgo: Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034da\u036b\u0357\u0364\u0364",
    # scripts
    "\u4e00\u4e2a\u732b\u7684\u7167\u7247 \u4e2d\u6587\u63d0\u793a\u8bcd",
    "\u732b\u306e\u5199\u771f \u3072\u3089\u304c\u306a \u30ab\u30bf\u30ab\u30ca \uff76\uff80\uff76\uff85",
    "\uace0\uc591\uc774 \uc0ac\uc9c4 \ud55c\uad6d\uc5b4",
    "\u0642\u0637\u0629 \u0635\u0648\u0631\u0629 \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\u05d7\u05ea\u05d5\u05dc \u05ea\u05de\u05d5\u05e0\u05d4",
    "\u0915\u093f\u0938\u094d\u0938\u093e \u092c\u093f\u0932\u094d\u0932\u0940 \u0939\u093f\u0928\u094d\u0926\u0940",
    "\u0e41\u0e21\u0e27 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "\u03b3\u03ac\u03c4\u03b1 \u03b5\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u039a\u0391\u039b\u0397\u039c\u0395\u03a1\u0391",
    "\u043a\u043e\u0448\u043a\u0430 \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0423\u041a\u0420\u0410\u0407\u041d\u0410",
    "\u10d9\u10d0\u10e2\u10d0 \u0570\u0561\u0575\u0565\u0580\u0565\u0576 \u12a0\u121b\u122d\u129b",
    "\u0baa\u0bc2\u0ba9\u0bc8 \u0c2a\u0c3f\u0c32\u0c4d\u0c32\u0c3f \u0d2a\u0d42\u0d1a\u0d4d\u0d1a \u0f56\u0f7c\u0f51",
    "\U00020000\U0002a6d6 \U0002a700 \U0002b740 \U0002b820 \U0002ceaf \u3400\u4dbf \u9fff",
    "\u3007 \u3005 \u30fc \u3002\u3001 \u300c\u300d \uff08\uff09 \uff01\uff1f",
    # emoji
    "\U0001f431 \U0001f408 \U0001f63a\U0001f63a\U0001f63a",
    "\U0001f44d\U0001f3fb \U0001f44d\U0001f3fc \U0001f44d\U0001f3fd \U0001f44d\U0001f3fe \U0001f44d\U0001f3ff",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "\U0001f3f3\ufe0f\u200d\U0001f308 \U0001f3f4\u200d\u2620\ufe0f \U0001f441\ufe0f\u200d\U0001f5e8\ufe0f",
    "\U0001f469\U0001f3fd\u200d\U0001f52c \U0001f9d1\U0001f3ff\u200d\U0001f91d\u200d\U0001f9d1\U0001f3fb",
    "\U0001f1fa\U0001f1f8 \U0001f1ef\U0001f1f5 \U0001f1e9\U0001f1ea flags",
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f scotland",
    "\u2764\ufe0f \u2764 \u263a\ufe0e 1\ufe0f\u20e3 #\ufe0f\u20e3",
    "new in Unicode 15 (unassigned for Python 3.11): \U0001fae8 \U0001fa77 \U0001f6dc \u0cf3 \U00031350",
    # web text
    "&amp; &lt;b&gt; &quot;quoted&quot; &#39; &#x27; &nbsp; &copy;",
    "<b>bold</b> <img src=\"x.png\"/> <a href='https://example.com'>link</a>",
    "https://www.example.com/path/to/page?query=1&other=two#frag",
    "http://localhost:8080 ftp://files.example.org user@example.com @handle #hashtag",
    "C:\\Users\\name\\file.txt /usr/local/bin ~/.config",
    "emoji:) :-( <3 xD ^_^ o_O \u00af\\_(\u30c4)_/\u00af",
    "mojibake: Ã©tÃ© â€™ Ã¼ber",
    # long prompts, over 77 tokens
    ", ".join(["a highly detailed photograph of a majestic lion in the savanna at golden hour"] * 6),
    " ".join(str(i) for i in range(200)),
    "supercalifragilisticexpialidocious " * 20,
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 10,
    "a" * 1000,
    "ab" * 500,
    "\U0001f431" * 100,
    "!" * 300,
    "\u732b" * 100,
    "word " * 100,
]


# ---------------------------------------------------------------- random cases
def _pool(*ranges):
    return [chr(c) for a, b in ranges for c in range(a, b + 1) if unicodedata.category(chr(c)) != "Cn"]


POOLS = {
    "ascii_lower": list("abcdefghijklmnopqrstuvwxyz"),
    "ascii_upper": list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    "digits": list("0123456789"),
    "punct": list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "latin1": _pool((0xA1, 0xFF)),
    "latin_ext": _pool((0x100, 0x24F), (0x1E00, 0x1EFF)),
    "ipa_modifiers": _pool((0x250, 0x2FF)),
    "combining": _pool((0x300, 0x36F), (0x1AB0, 0x1AFF), (0x20D0, 0x20FF)),
    "greek": _pool((0x370, 0x3FF), (0x1F00, 0x1FFF)),
    "cyrillic": _pool((0x400, 0x52F)),
    "armenian_hebrew_arabic": _pool((0x531, 0x6FF)),
    "indic": _pool((0x900, 0xDFF)),
    "thai_lao_tibetan": _pool((0xE00, 0xFFF)),
    "georgian_hangul_jamo": _pool((0x10A0, 0x11FF)),
    "general_punct": _pool((0x2000, 0x206F)),
    "symbols": _pool((0x2070, 0x2BFF)),
    "cjk_punct_kana": _pool((0x3000, 0x30FF)),
    "cjk": _pool((0x4E00, 0x9FFF), (0x3400, 0x4DBF)),
    "hangul": _pool((0xAC00, 0xD7A3)),
    "compat_forms": _pool((0xF900, 0xFAFF), (0xFB00, 0xFDFF), (0xFE00, 0xFFEF)),
    "emoji": _pool((0x1F300, 0x1FAFF)),
    "skin_tones": _pool((0x1F3FB, 0x1F3FF)),
    "supplementary": _pool((0x10000, 0x1F2FF), (0x20000, 0x2FA1F)),
    "whitespace": ["\t", "\n", "\r", "\x0b", "\x0c", "\xa0", "\u2028", "\u2029", "\u3000", "\u2009", "\u1680"],
    "format_control": ["\x01", "\x1b", "\x7f", "\x85", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad",
                       "\u202e", "\ufe0f", "\ufe0e", "\ufffd", "\ue000", "\U000f0001", "\ufffe"],
    "contractions": ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'D", "'", "''"],
    "specials": ["<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "<|", "|>"],
    "sigma": ["\u03a3", "\u03c3", "\u03c2", "\u0130", "\u0131", "I", "\u017f", "\u212a"],
}
WORDS = ("a photo of the cat dog astronaut riding horse mars painting portrait landscape highly detailed "
         "beautiful cinematic lighting 4k 8k octane render unreal engine trending artstation by greg "
         "rutkowski alphonse mucha studio ghibli anime style oil on canvas watercolor sketch").split()


def random_text(rng):
    kind = rng.random()
    if kind < 0.25:  # prompt-like: English words with some noise
        parts = []
        for _ in range(rng.randint(1, 40)):
            w = rng.choice(WORDS)
            r = rng.random()
            if r < 0.1:
                w = w.upper()
            elif r < 0.2:
                w = w.capitalize()
            elif r < 0.25:
                w += rng.choice(POOLS["contractions"])
            elif r < 0.3:
                w += rng.choice(POOLS["punct"]) * rng.randint(1, 3)
            parts.append(w)
        return rng.choice([" ", ", ", "  ", "\t"]).join(parts)
    if kind < 0.9:  # a mix of pools
        names = rng.sample(sorted(POOLS), rng.randint(1, 5))
        out = []
        for _ in range(rng.randint(1, 60)):
            r = rng.random()
            if r < 0.15:
                out.append(" ")
            else:
                out.append(rng.choice(POOLS[rng.choice(names)]))
        return "".join(out)
    # arbitrary code points, surrogates and U+0000 excluded
    out = []
    for _ in range(rng.randint(1, 30)):
        c = rng.choice([rng.randint(1, 0x7F), rng.randint(0x80, 0xFFFF), rng.randint(0x10000, 0x10FFFF)])
        if 0xD800 <= c <= 0xDFFF:
            c = 0x20
        out.append(chr(c))
    return "".join(out)


def case(tok, text):
    assert "\x00" not in text
    ids = tok(text, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    tokens = tok.convert_tokens_to_ids(tok.tokenize(text))
    assert len(ids) == MAX_LENGTH
    return {"text": text, "ids": ids, "tokens": tokens}


# SD-2.x style: a legacy tokenizer_config.json (no added_tokens_decoder) whose pad
# token is overridden to "!" by special_tokens_map.json, as in stabilityai's repos.
_ADDED = lambda s: {"__type": "AddedToken", "content": s, "lstrip": False, "normalized": True,  # noqa: E731
                    "rstrip": False, "single_word": False}
SD2_FILES = {
    "tokenizer_config.json": {
        "add_prefix_space": False, "bos_token": _ADDED("<|startoftext|>"), "do_lower_case": True,
        "eos_token": _ADDED("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
        "name_or_path": "stabilityai/stable-diffusion-2", "pad_token": "<|endoftext|>",
        "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
        "unk_token": _ADDED("<|endoftext|>"),
    },
    "special_tokens_map.json": {
        "bos_token": {k: v for k, v in _ADDED("<|startoftext|>").items() if k != "__type"},
        "eos_token": {k: v for k, v in _ADDED("<|endoftext|>").items() if k != "__type"},
        "pad_token": "!",
        "unk_token": {k: v for k, v in _ADDED("<|endoftext|>").items() if k != "__type"},
    },
}
BANG_TEXTS = [
    "", "a photo of a cat", "hello!", "hello !!", "wow!!! amazing!", "!", "!!!", "!a!b!c!", "it's!'s",
    "!<|endoftext|>!", "\u00a1hola! \u00bfqu\u00e9?", "! ! !", "a!" * 60, "a photo of a cat!" * 8,
    "\U0001f431!\U0001f431", "!\u0301 e\u0301!", "caf\u00e9! CAF\u00c9!",
]


def variant(name, files_dir, tok):
    files = {}
    for fn in ("tokenizer_config.json", "special_tokens_map.json"):
        p = os.path.join(files_dir, fn)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                files[fn] = f.read()
    return {"name": name, "files": files, "cases": [case(tok, t) for t in BANG_TEXTS]}


def main():
    tok_dir = clip_vocab.DEFAULT_DIR
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    assert tok.fix_text is None, "CLIPTokenizer is using ftfy"
    rng = random.Random(20240917)
    texts = EDGE + [random_text(rng) for _ in range(N_RANDOM)]
    cases = [case(tok, t) for t in texts]

    variants = []
    with tempfile.TemporaryDirectory() as tmp:
        sd2 = os.path.join(tmp, "sd2")
        os.makedirs(sd2)
        for fn in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(tok_dir, fn), sd2)
        for fn, obj in SD2_FILES.items():
            with open(os.path.join(sd2, fn), "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2)
        t2 = CLIPTokenizer.from_pretrained(sd2)
        assert t2.pad_token == "!", t2.pad_token
        variants.append(variant("sd2-legacy-pad-bang", sd2, t2))

        saved = clip_vocab.write_clip_tokenizer(os.path.join(tmp, "saved"), pad_token="!")
        variants.append(variant("saved-pad-bang", saved, CLIPTokenizer.from_pretrained(saved)))

    doc = {
        "version": VERSION,
        "script": SCRIPT,
        "regenerate": f"re-run {SCRIPT} with the reference venv (.venv/bin/python)",
        "transformers": transformers.__version__,
        "python_unicode": unicodedata.unidata_version,
        "tokenizer_dir": "tests/data/clip-tokenizer",
        "max_length": MAX_LENGTH,
        "cases": cases,
        "variants": variants,
    }
    # One case per line keeps the file diffable and small.
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("{\n")
        for k, v in doc.items():
            if k in ("cases", "variants"):
                continue
            f.write(f"{json.dumps(k)}: {json.dumps(v)},\n")
        for key in ("variants", "cases"):
            f.write(f'"{key}": [\n')
            items = doc[key]
            for i, item in enumerate(items):
                sep = ",\n" if i + 1 < len(items) else "\n"
                f.write(json.dumps(item, ensure_ascii=True, separators=(",", ":")) + sep)
            f.write("]" + (",\n" if key == "variants" else "\n"))
        f.write("}\n")
    json.load(open(OUT, encoding="utf-8"))  # round-trip check
    n_trunc = sum(len(c["tokens"]) > MAX_LENGTH - 2 for c in cases)
    print(f"wrote {len(cases)} cases ({n_trunc} truncated) + {len(variants)} variants to {OUT} "
          f"({os.path.getsize(OUT)} bytes)")


def unicode_check():
    """Prints what engine/models/tokenizer.c must special-case about libutf8proc's Unicode data."""
    import ctypes
    import ctypes.util

    import regex

    u = ctypes.CDLL(ctypes.util.find_library("utf8proc") or "libutf8proc.so.2")
    u.utf8proc_category_string.restype = ctypes.c_char_p
    u.utf8proc_unicode_version.restype = ctypes.c_char_p
    for f in ("utf8proc_tolower", "utf8proc_toupper", "utf8proc_totitle"):
        getattr(u, f).restype = ctypes.c_int32
    print(f"utf8proc Unicode {u.utf8proc_unicode_version().decode()}, Python {unicodedata.unidata_version}, "
          f"regex {regex.__version__}")
    mid = {0x27, 0x2E, 0x3A, 0xB7, 0x387, 0x55F, 0x5F4, 0x2018, 0x2019, 0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55,
           0xFF07, 0xFF0E, 0xFF1A}

    def c_class(cp):  # tokenizer.c's is_case_ignorable / is_cased
        cat = u.utf8proc_category_string(cp).decode()
        if cat in ("Mn", "Me", "Cf", "Lm", "Sk") or cp in mid:
            return "ignorable"
        if (cat in ("Lu", "Ll", "Lt") or u.utf8proc_tolower(cp) != cp or u.utf8proc_toupper(cp) != cp
                or u.utf8proc_totitle(cp) != cp or u.utf8proc_islower(cp) or u.utf8proc_isupper(cp)):
            return "cased"
        return "other"

    flags = regex.IGNORECASE
    letter, number = regex.compile(r"[\p{L}]", flags), regex.compile(r"[\p{N}]", flags)
    other = regex.compile(r"[^\s\p{L}\p{N}]", flags)
    new, issues = [], []
    for cp in range(1, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c, pcat = chr(cp), unicodedata.category(chr(cp))
        ucat = u.utf8proc_category_string(cp).decode()
        if pcat == "Cn":
            if ucat != "Cn":
                new.append(cp)
            continue
        if ucat != pcat:
            issues.append(f"U+{cp:04X} category {pcat} (Python) vs {ucat} (utf8proc)")
        if c.lower() != chr(u.utf8proc_tolower(cp)) and cp != 0x130:
            issues.append(f"U+{cp:04X} lower() {c.lower()!r} vs utf8proc_tolower")
        a, b = ("A" + c + "\u03a3").lower()[-1] == "\u03c2", (c + "\u03a3").lower()[-1] == "\u03c2"
        py_class = "ignorable" if a and not b else "cased" if b else "other"
        if py_class != c_class(cp):
            issues.append(f"U+{cp:04X} final-sigma class {py_class} (Python) vs {c_class(cp)}")
        want = (pcat[0] == "L", pcat[0] == "N", pcat[0] not in "LN" and not c.isspace())
        got = (bool(letter.fullmatch(c)), bool(number.fullmatch(c)), bool(other.fullmatch(c)))
        # C* never reaches the regex (BasicTokenizer drops it), whitespace splits words
        if got != want and cp != 0x345 and pcat[0] != "C" and not c.isspace():
            issues.append(f"U+{cp:04X} regex classes {got} vs category {pcat}")
    ranges = []
    for cp in new:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    print(f"{len(new)} code points utf8proc knows and Python does not, {len(ranges)} ranges:")
    print(", ".join(f"{{0x{a:04X}, 0x{b:04X}}}" for a, b in ranges))
    print(f"{len(issues)} other differences" + "".join("\n  " + i for i in issues[:50]))


if __name__ == "__main__":
    if sys.argv[1:] == ["--unicode-check"]:
        unicode_check()
    else:
        main()
