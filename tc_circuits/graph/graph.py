"""``AttributionGraph``: a node table plus sparse, weighted edges (no node x node matrix).

Nodes are stored in one table (a column of tensors per field) in this order:

    [features | errors (n_layers x n_pos) | embeddings (n_pos) | positions (n_pos or 0)
     | constant (1) | targets (n_targets)]

Edges are COO triples ``(target_idx, source_idx, weight)``: ``weight`` is the direct effect of
the source on the target in the linearised model. Node indices are any integer dtype (the
engine writes int32 while the node count allows, 8 bytes per edge less than int64; subgraphs
keep their graph's dtype). Rows exist only for *expanded* nodes (all
targets and the features whose incoming edges were computed); every other node is a pure
source. For an expanded node the sum of its incoming edges equals its ``value``.

Files: ``graph.safetensors`` (all tensors) + ``graph.json`` (strings and metadata). No pickle;
a save/load round trip is exact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tc_circuits.fileio import atomic_write_many
from tc_circuits.graph.table import feature_table
from tc_circuits.validate import (
    ChecksumError,
    load_safetensors,
    read_json_object,
    safetensors_metadata,
    save_safetensors,
    text_digest,
)

#: Node types, in node-table order. Their position in this tuple is the stored type code.
NODE_TYPES = ("feature", "error", "mlp_const", "embedding", "position", "constant", "target")
#: Node types that stand for what the transcoders fail to explain.
ERROR_TYPES = ("error", "mlp_const")
#: Node types that are inputs of the model (no incoming edges, not errors).
INPUT_TYPES = ("embedding", "position", "constant")

TENSORS_NAME = "graph.safetensors"
META_NAME = "graph.json"
FORMAT_VERSION = 1
#: Key (in graph.safetensors' header) of graph.json's SHA-256.
JSON_CHECKSUM_KEY = "tc_circuits.graph_json_sha256"


def type_code(name: str) -> int:
    """The stored integer code of node type ``name``."""
    if name not in NODE_TYPES:
        raise ValueError(f"unknown node type {name!r}; expected one of {NODE_TYPES}")
    return NODE_TYPES.index(name)


@dataclass
class NodeTable:
    """One row per node; integer fields are -1 where they do not apply, floats NaN."""

    type: Int[Tensor, " n"]
    """Type code, an index into :data:`NODE_TYPES`."""
    layer: Int[Tensor, " n"]
    """Layer of features / errors / mlp_const; -1 otherwise."""
    pos: Int[Tensor, " n"]
    """Token position (context index); -1 for the constant node."""
    latent: Int[Tensor, " n"]
    """Latent index of a feature; -1 otherwise."""
    token_id: Int[Tensor, " n"]
    """Token id of an embedding node, or of a single-token logit target; -1 otherwise."""
    activation: Float[Tensor, " n"]
    """Feature activation a_s (NaN for other nodes); float64."""
    value: Float[Tensor, " n"]
    """What the incoming edges sum to: feature pre-activation, target value (NaN for sources)."""
    expanded: Bool[Tensor, " n"]
    """True where the node's incoming edges (its row) were computed."""

    FIELDS = ("type", "layer", "pos", "latent", "token_id", "activation", "value", "expanded")

    def __len__(self) -> int:
        return int(self.type.shape[0])

    def select(self, idx: Tensor) -> NodeTable:
        """The sub-table of rows ``idx`` (a long index or a boolean mask)."""
        return NodeTable(**{f: getattr(self, f)[idx] for f in self.FIELDS})

    @staticmethod
    def concat(tables: list[NodeTable]) -> NodeTable:
        return NodeTable(**{f: torch.cat([getattr(t, f) for t in tables]) for f in NodeTable.FIELDS})

    @staticmethod
    def make(
        kind: str,
        n: int,
        *,
        layer: Tensor | int = -1,
        pos: Tensor | int = -1,
        latent: Tensor | int = -1,
        token_id: Tensor | int = -1,
        activation: Tensor | float = float("nan"),
        value: Tensor | float = float("nan"),
    ) -> NodeTable:
        """``n`` nodes of type ``kind``; scalars are broadcast."""

        def col(x: Tensor | float | int, dtype: torch.dtype) -> Tensor:
            t = torch.as_tensor(x, dtype=dtype).detach().cpu()
            return t.expand(n).clone() if t.ndim == 0 else t.to(dtype).clone()

        return NodeTable(
            type=torch.full((n,), type_code(kind), dtype=torch.int64),
            layer=col(layer, torch.int64),
            pos=col(pos, torch.int64),
            latent=col(latent, torch.int64),
            token_id=col(token_id, torch.int64),
            activation=col(activation, torch.float64),
            value=col(value, torch.float64),
            expanded=torch.zeros(n, dtype=torch.bool),
        )


@dataclass
class AttributionGraph:
    """Nodes, sparse edges, targets and provenance of one attribution run."""

    nodes: NodeTable
    """The node table."""
    edge_target: Int[Tensor, " e"]
    """Row (target node index) of each edge."""
    edge_source: Int[Tensor, " e"]
    """Column (source node index) of each edge."""
    edge_weight: Float[Tensor, " e"]
    """Direct effect of the source on the target."""
    target_weights: Float[Tensor, " t"]
    """Weight of each target node in influence / pruning (probabilities for logit targets)."""
    target_labels: list[str]
    """Human-readable label of each target (e.g. ``'logit " 58"'``)."""
    prompt_tokens: Int[Tensor, " p"]
    """Token ids of the prompt."""
    prompt_strings: list[str]
    """Decoded string of each prompt token."""
    prompt: str = ""
    """The prompt text (decoded tokens when the prompt was given as ids)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Model signature, transcoder info, engine parameters (JSON-serialisable)."""

    def __post_init__(self) -> None:
        e = self.edge_weight.shape[0]
        if self.edge_target.shape[0] != e or self.edge_source.shape[0] != e:
            raise ValueError("edge_target, edge_source and edge_weight must have the same length")
        n_t = int((self.nodes.type == type_code("target")).sum())
        if n_t != len(self.target_labels) or n_t != self.target_weights.shape[0]:
            raise ValueError(
                f"{n_t} target nodes but {len(self.target_labels)} labels and "
                f"{self.target_weights.shape[0]} weights"
            )
        if len(self.prompt_strings) != self.prompt_tokens.shape[0]:
            raise ValueError("prompt_strings and prompt_tokens differ in length")
        n = len(self.nodes)
        for name in ("edge_target", "edge_source"):
            idx = getattr(self, name)
            if idx.is_floating_point() or idx.dtype == torch.bool or idx.is_complex():
                raise ValueError(f"{name} must hold integer node indices, got dtype {idx.dtype}")
            if idx.dtype not in (torch.int32, torch.int64):  # index_add_ / indexing take these two
                idx = idx.long()
                setattr(self, name, idx)
            if e and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise ValueError(
                    f"{name} holds node index range [{int(idx.min())}, {int(idx.max())}], "
                    f"outside [0, {n}) for a graph of {n} nodes"
                )

    # ------------------------------------------------------------------ views
    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return int(self.edge_weight.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.prompt_tokens.shape[0])

    def indices_of(self, kind: str) -> Tensor:
        """Node indices of type ``kind`` (in table order)."""
        return torch.nonzero(self.nodes.type == type_code(kind)).flatten()

    def mask_of(self, *kinds: str) -> Tensor:
        """Boolean mask of nodes whose type is one of ``kinds``."""
        mask = torch.zeros(self.n_nodes, dtype=torch.bool)
        for k in kinds:
            mask |= self.nodes.type == type_code(k)
        return mask

    @property
    def target_indices(self) -> Tensor:
        return self.indices_of("target")

    def node_type(self, i: int) -> str:
        return NODE_TYPES[int(self.nodes.type[i])]

    def node_id(self, i: int) -> str:
        """Unambiguous ``layer_index_pos`` id of node ``i`` (the JSON export uses the same)."""
        kind = self.node_type(i)
        layer, pos = int(self.nodes.layer[i]), int(self.nodes.pos[i])
        if kind == "feature":
            return f"{layer}_{int(self.nodes.latent[i])}_{pos}"
        if kind == "error":
            return f"{layer}_-1_{pos}"
        if kind == "mlp_const":
            return f"{layer}_-2_{pos}"
        if kind == "embedding":
            return f"E_{int(self.nodes.token_id[i])}_{pos}"
        if kind == "position":
            return f"P_{pos}_{pos}"
        if kind == "constant":
            return "B_0_0"
        t = int((self.nodes.type[:i] == type_code("target")).sum())
        n_layers = int(self.metadata.get("n_layers", 0))
        return f"{n_layers + 1}_{self.target_vocab_index(t)}_{pos}"

    def target_vocab_index(self, t: int) -> int:
        """Token id of target ``t`` when it is a plain logit, else ``d_vocab + t`` (virtual)."""
        idx = self.target_indices[t]
        tok = int(self.nodes.token_id[idx])
        return tok if tok >= 0 else int(self.metadata.get("d_vocab", 0)) + t

    def features(self, **kwargs: Any) -> Any:
        """The feature nodes as a pandas DataFrame, strongest first (:func:`tc_circuits.graph.table.feature_table`)."""
        return feature_table(self, **kwargs)

    def node_ids(self) -> list[str]:
        return [self.node_id(i) for i in range(self.n_nodes)]

    def adjacency(self) -> Tensor:
        """Sparse COO ``[n_nodes, n_nodes]`` matrix, rows = targets, columns = sources."""
        idx = torch.stack([self.edge_target.long(), self.edge_source.long()])
        return torch.sparse_coo_tensor(
            idx, self.edge_weight, (self.n_nodes, self.n_nodes), check_invariants=True
        ).coalesce()

    def row_sums(self) -> Float[Tensor, " n"]:
        """Sum of incoming edge weights of every node (0 for unexpanded nodes)."""
        out = torch.zeros(self.n_nodes, dtype=torch.float64)
        return out.index_add_(0, self.edge_target, self.edge_weight.double())

    def exactness_error(self) -> float:
        """Max |row sum - value| over expanded nodes (the built-in exactness identity)."""
        exp = self.nodes.expanded
        if not bool(exp.any()):
            return 0.0
        dev = (self.row_sums()[exp] - self.nodes.value[exp].double()).abs()
        return float(dev.max())

    def seed_weights(self) -> Float[Tensor, " n"]:
        """Target weights spread over the node table (zero on non-target nodes)."""
        w = torch.zeros(self.n_nodes, dtype=torch.float32)
        w[self.target_indices] = self.target_weights.float()
        return w

    # ------------------------------------------------------------------ labels
    def label(self, node: int | str | tuple[int, int], text: str | None) -> None:
        """Give ``node`` a short human label (``None`` removes it); kept in ``metadata["labels"]``.

        ``node`` is a node index, a node id (``"1_23_4"``) or a feature ``(layer, latent)``
        (that feature at every position, stored as ``"1_23"``). Labels travel with
        :meth:`save` / :meth:`load` and into the Neuronpedia JSON (``clerp``).
        """
        if isinstance(node, tuple):
            if len(node) != 2:
                raise ValueError(f"a feature key is (layer, latent), got {node!r}")
            key = f"{int(node[0])}_{int(node[1])}"
        elif isinstance(node, str):
            key = node
        elif isinstance(node, int) and 0 <= node < self.n_nodes:
            key = self.node_id(node)
        else:
            raise ValueError(f"node {node!r} is not a node index (0..{self.n_nodes - 1}), id or (layer, latent)")
        labels = dict(self.metadata.get("labels", {}))
        if text is None:
            labels.pop(key, None)
        elif not isinstance(text, str):
            raise ValueError(f"label of {key!r} must be a string, got {text!r}")
        else:
            labels[key] = text
        self.metadata["labels"] = labels

    def node_label(self, i: int) -> str | None:
        """The user label of node ``i`` (its own, else its feature's), or None."""
        labels = self.metadata.get("labels") or {}
        key = self.node_id(i)
        if key in labels:
            return labels[key]
        if self.node_type(i) == "feature":
            return labels.get(f"{int(self.nodes.layer[i])}_{int(self.nodes.latent[i])}")
        return None

    def load_labels(self, path: str | os.PathLike) -> None:
        """Add labels from a JSON file ``{node id or "layer_latent": "label"}``."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"labels file {path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"labels file {path} must hold a JSON object {{node id: label}}")
        for key, text in data.items():
            self.label(key, text)

    # ------------------------------------------------------------------ subgraphs
    def subgraph(self, node_mask: Tensor, edge_mask: Tensor | None = None) -> AttributionGraph:
        """The graph on the kept nodes (re-indexed), keeping edges between kept nodes.

        Kept nodes retain their ``expanded`` flag, but after pruning row sums no longer
        equal node values (dropped sources are gone).
        """
        node_mask = node_mask.bool()
        new_index = torch.full((self.n_nodes,), -1, dtype=self.edge_target.dtype)
        new_index[node_mask] = torch.arange(int(node_mask.sum()), dtype=new_index.dtype)
        keep = node_mask[self.edge_target.long()] & node_mask[self.edge_source.long()]
        if edge_mask is not None:
            keep &= edge_mask.bool()
        tmask = node_mask[self.target_indices]
        return AttributionGraph(
            nodes=self.nodes.select(node_mask),
            edge_target=new_index[self.edge_target.long()[keep]],
            edge_source=new_index[self.edge_source.long()[keep]],
            edge_weight=self.edge_weight[keep].clone(),
            target_weights=self.target_weights[tmask].clone(),
            target_labels=[lab for lab, k in zip(self.target_labels, tmask.tolist()) if k],
            prompt_tokens=self.prompt_tokens.clone(),
            prompt_strings=list(self.prompt_strings),
            prompt=self.prompt,
            metadata=dict(self.metadata),
        )

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``graph.safetensors`` + ``graph.json`` into folder ``path`` (atomically)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"nodes.{f}": getattr(self.nodes, f).contiguous() for f in NodeTable.FIELDS}
        tensors.update(
            edge_target=self.edge_target.contiguous(),
            edge_source=self.edge_source.contiguous(),
            edge_weight=self.edge_weight.contiguous(),
            target_weights=self.target_weights.contiguous(),
            prompt_tokens=self.prompt_tokens.contiguous(),
        )
        meta = {
            "format_version": FORMAT_VERSION,
            "node_types": list(NODE_TYPES),
            "target_labels": self.target_labels,
            "prompt_strings": self.prompt_strings,
            "prompt": self.prompt,
            "metadata": self.metadata,
        }
        text = json.dumps(meta, indent=1)
        # both files together (never an old one next to a new one), each with a content hash:
        # the tensors' in their header, graph.json's recorded there too
        atomic_write_many({
            path / TENSORS_NAME: lambda p: save_safetensors(tensors, p, {JSON_CHECKSUM_KEY: text_digest(text)}),
            path / META_NAME: lambda p: Path(p).write_text(text),
        })
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AttributionGraph:
        """Load a folder written by :meth:`save`."""
        path = Path(path)
        if path.is_file() and path.name in (TENSORS_NAME, META_NAME):
            raise ValueError(
                f"{path} is one file of a saved graph; pass its folder {path.parent} "
                f"(which holds {TENSORS_NAME} and {META_NAME})"
            )
        if path.is_file():
            raise ValueError(f"{path} is a file; expected a folder holding {TENSORS_NAME} and {META_NAME}")
        for f in (path / TENSORS_NAME, path / META_NAME):
            if not f.is_file():
                raise FileNotFoundError(f"attribution graph file missing: {f}")
        meta = read_json_object(path / META_NAME, "graph metadata", ("node_types", "target_labels", "prompt_strings"))
        t = load_safetensors(path / TENSORS_NAME, "graph tensors")
        recorded = safetensors_metadata(path / TENSORS_NAME).get(JSON_CHECKSUM_KEY)
        if recorded is not None and recorded != text_digest((path / META_NAME).read_text()):
            raise ChecksumError(
                f"{path / META_NAME} fails its content check (its sha256 differs from the one recorded in "
                f"{TENSORS_NAME}): it was modified or corrupted after the graph was saved"
            )
        if meta.get("node_types") != list(NODE_TYPES):
            raise ValueError(f"{path}: unknown node type coding {meta.get('node_types')}")
        for key in ("target_labels", "prompt_strings"):
            if not isinstance(meta[key], list) or not all(isinstance(x, str) for x in meta[key]):
                raise ValueError(f"{path / META_NAME}: {key} must be a list of strings")
        needed = [f"nodes.{f}" for f in NodeTable.FIELDS] + [
            "edge_target", "edge_source", "edge_weight", "target_weights", "prompt_tokens"]
        missing = [k for k in needed if k not in t]
        if missing:
            raise ValueError(f"{path / TENSORS_NAME} is missing tensors {missing}")
        lengths = {int(t[f"nodes.{f}"].shape[0]) for f in NodeTable.FIELDS}
        if len(lengths) != 1:
            raise ValueError(f"{path / TENSORS_NAME}: node table columns differ in length {sorted(lengths)}")
        nodes = NodeTable(**{f: t[f"nodes.{f}"] for f in NodeTable.FIELDS})
        return cls(
            nodes=nodes,
            edge_target=t["edge_target"],
            edge_source=t["edge_source"],
            edge_weight=t["edge_weight"],
            target_weights=t["target_weights"],
            target_labels=list(meta["target_labels"]),
            prompt_tokens=t["prompt_tokens"],
            prompt_strings=list(meta["prompt_strings"]),
            prompt=meta.get("prompt", ""),
            metadata=meta.get("metadata", {}),
        )
