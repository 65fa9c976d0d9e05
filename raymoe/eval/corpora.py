"""Documents of the perplexity corpora (exllamav2's calibration text), for lm-eval's `process_docs`.

- wiki: articles delimited by `<doc id=... title=...>` ... `</doc>`; a document is
  the article text without the markup.
  `wiki_heldout` keeps only the held-out articles (never calibration text).
- c4: one web document per line.
"""

from __future__ import annotations

from raymoe.data.splits import split_wiki, take_split

__all__ = ["split_wiki", "split_lines", "wiki_docs", "wiki_heldout_docs", "c4_docs"]


def split_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _docs(dataset, split):
    import datasets

    text = "\n".join(dataset["text"])  # the `text` loader with sample_by=document: one row per file
    return datasets.Dataset.from_dict({"text": split(text)})


def wiki_docs(dataset):
    """lm-eval `process_docs`: the file-as-one-row dataset -> one row per wiki article."""
    return _docs(dataset, split_wiki)


def wiki_heldout_docs(dataset):
    """lm-eval `process_docs`: only the held-out wiki articles (the last 25%, see `raymoe.data.splits`)."""
    return _docs(dataset, lambda text: take_split(split_wiki(text), "heldout"))


def c4_docs(dataset):
    """lm-eval `process_docs`: the file-as-one-row dataset -> one row per c4 document."""
    return _docs(dataset, split_lines)
