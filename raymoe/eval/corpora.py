"""Documents of the perplexity corpora (exllamav2's calibration text), for lm-eval's `process_docs`.

- wiki: articles delimited by `<doc id=... title=...>` ... `</doc>`; a document is
  the article text without the markup.
- c4: one web document per line.
"""

from __future__ import annotations

import re

__all__ = ["split_wiki", "split_lines", "wiki_docs", "c4_docs"]

_DOC = re.compile(r"<doc\b[^>]*>\n?(.*?)</doc>", re.S)


def split_wiki(text: str) -> list[str]:
    return [d.strip() for d in _DOC.findall(text) if d.strip()]


def split_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _docs(dataset, split):
    import datasets

    text = "\n".join(dataset["text"])  # the `text` loader with sample_by=document: one row per file
    return datasets.Dataset.from_dict({"text": split(text)})


def wiki_docs(dataset):
    """lm-eval `process_docs`: the file-as-one-row dataset -> one row per wiki article."""
    return _docs(dataset, split_wiki)


def c4_docs(dataset):
    """lm-eval `process_docs`: the file-as-one-row dataset -> one row per c4 document."""
    return _docs(dataset, split_lines)
