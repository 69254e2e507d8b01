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


# ----------------------------------------------------------------------------- file content hashes
def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"b": torch.randn(7, generator=g), "a": torch.randn(3, 5, generator=g, dtype=torch.float64)}


def _digest_by_hand(h, tensors) -> str:
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_file_digest_is_xxh3_by_default_and_sha256_on_request():
    from tc_circuits.validate import tensors_digest

    t = _tensors()
    assert tensors_digest(t) == _digest_by_hand(xxhash.xxh3_128(), t)
    assert tensors_digest(t, "sha256") == _digest_by_hand(hashlib.sha256(), t)
    import pytest

    with pytest.raises(ValueError, match="unknown content-hash algorithm"):
        tensors_digest(t, "md5")


def test_new_files_carry_xxh3_and_older_sha256_files_still_verify(tmp_path):
    import pytest
    from safetensors.torch import save_file

    from tc_circuits.validate import (
        CHECKSUM_KEY,
        SHA256_CHECKSUM_KEY,
        ChecksumError,
        load_safetensors,
        safetensors_metadata,
        save_safetensors,
        tensors_digest,
    )

    t = _tensors()
    save_safetensors(t, tmp_path / "new.safetensors")
    meta = safetensors_metadata(tmp_path / "new.safetensors")
    assert meta[CHECKSUM_KEY] == tensors_digest(t) and SHA256_CHECKSUM_KEY not in meta
    old = tmp_path / "old.safetensors"  # as files were written before: a SHA-256 under the old key
    save_file(t, str(old), metadata={SHA256_CHECKSUM_KEY: tensors_digest(t, "sha256")})
    for f in (tmp_path / "new.safetensors", old):
        back = load_safetensors(f)
        assert all(torch.equal(back[k], t[k]) for k in t)
        data = bytearray(f.read_bytes())
        data[-3] ^= 0x40  # a flipped exponent bit of the last tensor
        f.write_bytes(bytes(data))
        with pytest.raises(ChecksumError, match="fails its content check"):
            load_safetensors(f)


def test_format_finiteness_check_by_sum_keeps_its_verdicts():
    import pytest

    from tc_circuits.formats._common import finite_or_raise

    big = torch.full((4,), 3e38)  # every element finite, the float32 sum overflows: must pass
    assert not torch.isfinite(big.sum())
    finite_or_raise("x", {"W": big, "i": torch.arange(3)})
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.ones(5)
        t[2] = bad
        with pytest.raises(ValueError, match="tensor W contains NaN or infinite values"):
            finite_or_raise("x", {"W": t})
