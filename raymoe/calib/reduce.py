"""Reduction of partial statistics (stages x replicas x windows) into `CalibStats`.

Sums add; probe inputs and routing traces are kept per micro-batch and
concatenated in micro-batch order at the end, so the result does not depend
on which replica or stage produced which part.
"""

from __future__ import annotations

import numpy as np

from raymoe.calib.batches import MicroBatch
from raymoe.moe.model_spec import MoeModelSpec
from raymoe.store.calib_stats import VECTOR_FIELDS, CalibStats, LayerStats

__all__ = ["Totals"]


class Totals:
    """Running sums of every partial handed over by the stages."""

    def __init__(self):
        self.layers: dict[int, dict] = {}
        self.probes: dict[int, dict[int, np.ndarray]] = {}
        self.traces: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self.pooled: dict[int, np.ndarray] = {}
        self.pooled_in: dict[int, dict[int, np.ndarray]] = {}  # layer -> sequence -> [H] token sum

    def add(self, part: dict) -> None:
        for layer, fields in part["layers"].items():
            acc = self.layers.setdefault(layer, {})
            for name, value in fields.items():
                acc[name] = value if name not in acc else acc[name] + value
        for b, per_layer in part["probes"].items():
            self.probes.setdefault(b, {}).update(per_layer)
        for b, per_layer in part["traces"].items():
            self.traces.setdefault(b, {}).update(per_layer)
        self.pooled.update(part["pooled"])
        for layer, rows in part.get("pooled_in", {}).items():
            self.pooled_in.setdefault(layer, {}).update(rows)  # each sequence passes one layer once

    def build(self, spec: MoeModelSpec, manifest: dict, batches: list[MicroBatch], seq_cluster: np.ndarray,
              num_clusters: int, seq_len: int) -> CalibStats:
        H = spec.hidden_size
        order = sorted(b.batch_id for b in batches)
        layers = {}
        for l, E in spec.experts.items():
            acc = self.layers.get(l, {})
            nxt = spec.next_moe_layer(l)
            st = LayerStats(layer=l, num_experts=E, top_k=spec.top_k, tokens=float(acc.get("tokens", 0.0)),
                            probe_tokens=float(acc.get("probe_tokens", 0.0)))
            for name in VECTOR_FIELDS:
                setattr(st, name, np.asarray(acc.get(name, np.zeros(E)), dtype=np.float64))
            st.coact = np.asarray(acc.get("coact", np.zeros((E, E))), dtype=np.float64)
            st.probe_cos_sum = np.asarray(acc.get("probe_cos_sum", np.zeros((E, E))), dtype=np.float64)
            st.mean_output_sum = np.asarray(acc.get("mean_output_sum", np.zeros((E, H))), dtype=np.float64)
            if nxt is not None:
                E2 = spec.experts[nxt]
                st.trans = np.asarray(acc.get("trans", np.zeros((E, E2))), dtype=np.float64)
                st.trans_intensity = np.asarray(acc.get("trans_intensity", np.zeros((E, E2))), dtype=np.float64)
                st.trans_intensity_by_cluster = np.asarray(
                    acc.get("trans_intensity_by_cluster", np.zeros((num_clusters, E, E2))), dtype=np.float64)
                st.trans_routed = np.asarray(acc.get("trans_routed", np.zeros((E, E2))), dtype=np.float64)
                st.trans_routed_by_cluster = np.asarray(
                    acc.get("trans_routed_by_cluster", np.zeros((num_clusters, E, E2))), dtype=np.float64)
            chunks = [self.probes[b][l] for b in order if l in self.probes.get(b, {})]
            st.probe_inputs = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, H), np.float32)
            pooled_in = np.zeros((len(seq_cluster), H), dtype=np.float64)  # [N, H]
            for seq, row in self.pooled_in.get(l, {}).items():
                pooled_in[seq] = row / seq_len
            st.pooled_inputs = pooled_in.astype(np.float32)
            layers[l] = st
        pooled = np.stack([self.pooled[i] for i in range(len(seq_cluster))]) if self.pooled else None
        return CalibStats(manifest=manifest, layers=layers, num_clusters=num_clusters,
                          seq_cluster=np.asarray(seq_cluster, dtype=np.int64), seq_pooled=pooled,
                          extra={"traces": self._traces(spec, batches, seq_len)})

    def _traces(self, spec: MoeModelSpec, batches: list[MicroBatch], seq_len: int) -> dict[str, np.ndarray]:
        """Sampled routing traces: the routing of every MoE layer on the probe tokens."""
        seq, pos, layer, experts, weights = [], [], [], [], []
        for mb in sorted(batches, key=lambda m: m.batch_id):
            per_layer = self.traces.get(mb.batch_id, {})
            for l in spec.moe_layers:
                if l not in per_layer:
                    continue
                idx, w = per_layer[l]
                seq.append(mb.seq_ids[mb.probe // seq_len])
                pos.append(mb.probe % seq_len)
                layer.append(np.full(len(mb.probe), l))
                experts.append(idx)
                weights.append(w)
        if not seq:
            k = spec.top_k
            return {"seq": np.zeros(0, np.int64), "pos": np.zeros(0, np.int64), "layer": np.zeros(0, np.int64),
                    "experts": np.zeros((0, k), np.int32), "weights": np.zeros((0, k), np.float32)}
        return {"seq": np.concatenate(seq).astype(np.int64), "pos": np.concatenate(pos).astype(np.int64),
                "layer": np.concatenate(layer).astype(np.int64), "experts": np.concatenate(experts).astype(np.int32),
                "weights": np.concatenate(weights).astype(np.float32)}

