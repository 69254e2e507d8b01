"""Content hashes of dictionaries: the XXH3 digest, and graphs that recorded SHA-256 digests before it."""

from __future__ import annotations

import hashlib
import json

import torch
import xxhash

from tc_circuits.coders.hashing import PREFIX, hash_matches, transcoder_hash, transcoder_hash_sha256


def _tc():
    from tc_circuits.organism import load_organism_transcoders

    return load_organism_transcoders("skip_transcoder")[1]


def _by_hand(h, tc) -> str:
    """The digest written out independently: config JSON without ``extra``, then each
    parameter's name, dtype, shape and bytes (numpy ``tobytes``) in sorted name order."""
    cfg = dict(tc.cfg.to_dict())
    cfg.pop("extra", None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, p in sorted(tc.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def test_hash_is_xxh3_of_config_and_weights():
    tc = _tc()
    assert transcoder_hash(tc) == PREFIX + _by_hand(xxhash.xxh3_128(), tc)


def test_legacy_sha256_hashes_still_match():
    tc = _tc()
    legacy = _by_hand(hashlib.sha256(), tc)
    assert transcoder_hash_sha256(tc) == legacy
    assert hash_matches(tc, legacy) and hash_matches(tc, transcoder_hash(tc))
    with torch.no_grad():
        tc.W_enc[0, 0] += 1e-6
    assert not hash_matches(tc, legacy)
    assert not hash_matches(tc, PREFIX + _by_hand(xxhash.xxh3_128(), _tc()))


def test_graph_with_a_legacy_hash_passes_the_provenance_check():
    from tc_circuits.graph.provenance import check_graph_transcoders, transcoder_mismatches
    from tc_circuits.organism import load_organism_transcoders

    tcs = load_organism_transcoders("skip_transcoder")

    class G:  # just the metadata the check reads
        metadata = {"transcoders": {str(L): {"n_latents": tc.cfg.n_latents, "activation": tc.cfg.activation,
                                             "k": tc.cfg.k, "skip": tc.cfg.skip, "input_site": tc.cfg.input_site,
                                             "output_site": tc.cfg.output_site,
                                             "content_hash": transcoder_hash_sha256(tc)}
                                    for L, tc in tcs.items()}}

    check_graph_transcoders(G(), tcs)
    G.metadata["transcoders"]["1"]["content_hash"] = "0" * 16
    assert transcoder_mismatches(G(), tcs) and "layer 1" in transcoder_mismatches(G(), tcs)[0]
