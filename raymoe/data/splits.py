"""Disjoint calibration / held-out views of the wiki corpus, split by article.

exllamav2's `wiki.utf8` holds one `<doc ...>` element per article (2349 of them).
The first 75% of the articles are calibration text (`wiki_calib`: what the testbed
builder fits on and what calibration should read when held-out perplexity is
measured), the last 25% are held out (`wiki_heldout`, the `wiki_heldout_ppl` task).
The two never share an article, so a held-out perplexity is never measured on
text a method or the testbed has seen.
"""

from __future__ import annotations

import re
from functools import lru_cache

from raymoe.data.packages import named_corpus_path

__all__ = ["HELDOUT_FRACTION", "SPLIT_CORPORA", "split_wiki", "take_split", "wiki_articles", "split_corpus_text"]

HELDOUT_FRACTION = 0.25
#: corpus name -> (source corpus, split)
SPLIT_CORPORA = {"wiki_calib": ("wiki", "calib"), "wiki_heldout": ("wiki", "heldout")}
_DOC = re.compile(r"<doc\b[^>]*>\n?(.*?)</doc>", re.S)


def split_wiki(text: str) -> list[str]:
    """Article bodies of a wiki file (markup stripped, empty ones dropped), in file order."""
    return [d.strip() for d in _DOC.findall(text) if d.strip()]


def take_split(docs: list[str], split: str) -> list[str]:
    """The `split` part of a document list ("calib": first 75%, "heldout": last 25%)."""
    if split not in ("calib", "heldout"):
        raise ValueError(f"split must be 'calib' or 'heldout', not {split!r}")
    cut = int(round(len(docs) * (1 - HELDOUT_FRACTION)))
    return docs[:cut] if split == "calib" else docs[cut:]


@lru_cache(maxsize=1)
def _wiki_docs() -> tuple[str, ...]:
    """Every article of the wiki corpus, read and parsed once per process."""
    return tuple(split_wiki(named_corpus_path("wiki").read_text(encoding="utf-8")))


def wiki_articles(split: str) -> tuple[str, ...]:
    """Articles of the wiki corpus in `split`, in file order."""
    return tuple(take_split(list(_wiki_docs()), split))


def split_corpus_text(name: str) -> str:
    """Text of a split corpus (`wiki_calib`, `wiki_heldout`): its articles joined by blank lines."""
    _, split = SPLIT_CORPORA[name]
    return "\n\n".join(wiki_articles(split))
