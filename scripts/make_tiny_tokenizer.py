"""Generate the tiny CLIP tokenizer shipped with sdapi's built-in `sdapi-tiny` model.

Writes `vocab.json` and `merges.txt` into src/sdapi/engine/tiny_tokenizer/. The vocabulary holds
the 256 byte-level characters of GPT-2/CLIP BPE, the same 256 with the end-of-word marker `</w>`,
the results of a handful of merges, and CLIP's two special tokens. With the whole byte alphabet
present any text encodes without unknown tokens, so the tokenizer is tiny yet complete.

Run once and commit the output; it needs only the standard library and is deterministic:

    python scripts/make_tiny_tokenizer.py
"""

from __future__ import annotations

import json
from pathlib import Path

DEST = Path(__file__).resolve().parent.parent / "src" / "sdapi" / "engine" / "tiny_tokenizer"

#: A few merges for common prompt words; order is merge priority, as in a real merges.txt.
#: Every merge's result must be in the vocabulary, so `vocab()` appends them all.
MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"),
    ("th", "e</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("d", "o"),
    ("do", "g</w>"),
    ("o", "f</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("p", "h"),
    ("ph", "o"),
    ("pho", "t"),
    ("phot", "o</w>"),
)

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def byte_chars() -> list[str]:
    """The byte -> printable character table of GPT-2/CLIP byte-level BPE, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, int] = {b: b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            # Control and whitespace bytes get code points past 255 so every byte is visible.
            table[b] = 256 + shifted
            shifted += 1
    return [chr(table[b]) for b in range(256)]


def vocab() -> dict[str, int]:
    chars = byte_chars()
    tokens = [*chars, *(c + "</w>" for c in chars), *(a + b for a, b in MERGES), *SPECIAL_TOKENS]
    return {token: index for index, token in enumerate(tokens)}


def main() -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    text = json.dumps(vocab(), ensure_ascii=False, indent=0, sort_keys=False)
    (DEST / "vocab.json").write_text(text + "\n", encoding="utf-8")
    merges = "".join(f"{a} {b}\n" for a, b in MERGES)
    (DEST / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    print(f"wrote {DEST / 'vocab.json'} and {DEST / 'merges.txt'}")


if __name__ == "__main__":
    main()
