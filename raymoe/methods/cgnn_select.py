"""C-GNN-PRUNE module 5: activation-aware selection from communities (community target and fill rule).

(Li, Wang, Wang, AAAI 2026; only the abstract is public, docs/METHODS.md makes it precise.)
- Activation-aware importance: I_e = s_e u_e, s_e the REAP saliency (mean over routed tokens of
  g_t(e) ||f_e(x_t)||) and u_e = count_e / sum counts; so I_e = reap_sum_e / sum counts, the
  layer's gate-weighted output mass carried by e.
- Community target: C_l = ceil(rho n_l) communities (rho = `community_ratio`, default 0.5),
  never more than n_l. A target of n_l with one expert each (rho = 1) leaves no fill: every
  community, however unimportant, takes a slot, and the strongest experts of large
  communities are dropped. With rho < 1 the rule is:
  1. every community keeps its most important expert (structure: each functional group of
     the interaction graph stays represented);
  2. the other n_l - C_l slots go to the most important of the remaining experts
     (importance: the kept set contains the top n_l - C_l experts by I, whatever the
     communities), so the importance kept is at least sum of the top n_l - C_l over the top n_l.
  The default rho = 0.5 splits the slots evenly between the two aims (a choice; the paper
  is silent). If there are more communities than n_l, the n_l most important representatives win.
- Group-limited routers (n_group = g > 1): the order above becomes a priority (representatives
  first, each set by importance), and every ORIGINAL group of E / g contiguous experts keeps its
  n_l / g highest-priority experts (raymoe.methods.common.keep_balanced); a group holding more
  representatives than n_l / g keeps its most important ones.
"""

from __future__ import annotations

import math

import numpy as np

from raymoe.methods.common import keep_balanced, top_n
from raymoe.store.calib_stats import LayerStats

__all__ = ["importance", "community_target", "selection_priority", "select_from_communities", "importance_kept"]


def importance(s: LayerStats) -> np.ndarray:
    """I_e = REAP saliency x usage share [E]."""
    return s.reap * s.usage


def community_target(n: int, ratio: float) -> int:
    """C_l = ceil(ratio n), at least 1 and at most n."""
    return min(max(math.ceil(ratio * n - 1e-9), 1), n)


def selection_priority(labels: np.ndarray, imp: np.ndarray) -> np.ndarray:
    """Priority [E]: representatives (best of each community) above all others, each by importance.

    priority_e = 1 + share_e for a representative, share_e otherwise (share_e = I_e / sum I in
    [0, 1]); ties within a community go to the lower index.
    """
    imp = np.clip(np.asarray(imp, dtype=np.float64), 0.0, None)
    share = imp / imp.sum() if imp.sum() > 0 else np.zeros(len(imp))
    prio = share.copy()  # [E]
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rep = members[np.lexsort((members, -imp[members]))[0]]
        prio[rep] += 1.0
    return prio


def select_from_communities(labels: np.ndarray, imp: np.ndarray, n: int, n_group: int = 1) -> list[int]:
    """Kept experts (ascending): best of each community, the rest filled by importance, per group."""
    return keep_balanced(selection_priority(labels, imp), n, n_group)


def importance_kept(keep: list[int], imp: np.ndarray) -> float:
    """sum_{e in keep} I_e / sum of the top |keep| I_e (1.0 = plain top-n by importance)."""
    imp = np.asarray(imp, dtype=np.float64)
    best = imp[top_n(imp, len(keep))].sum()
    return float(imp[list(keep)].sum() / best) if best > 0 else 1.0
