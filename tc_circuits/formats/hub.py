"""Fetch checkpoints from the Hugging Face Hub (through its local cache), then load them.

``load_from_hub`` downloads with ``huggingface_hub.snapshot_download`` (a folder, optionally
only ``subfolder/*``) or ``hf_hub_download`` (one file, e.g. a Dunefsky ``.pt``), both of which
reuse the local cache and honour ``HF_HUB_OFFLINE``; the result goes through
:func:`tc_circuits.formats.detect.load_any`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tc_circuits.formats.detect import load_any
from tc_circuits.coders.transcoder import Transcoder, TranscoderSet


def download(
    repo_id: str,
    *,
    subfolder: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Local path of ``repo_id`` (``/subfolder``, or the single ``filename``) from the hub cache."""
    import huggingface_hub

    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    cache = None if cache_dir is None else os.fspath(cache_dir)
    if filename is not None:
        local = huggingface_hub.hf_hub_download(
            repo_id=repo_id, filename=filename, subfolder=subfolder, revision=revision, cache_dir=cache
        )
        return Path(local)
    patterns = None if subfolder is None else [f"{subfolder.strip('/')}/*"]
    root = huggingface_hub.snapshot_download(
        repo_id=repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns
    )
    path = Path(root) / subfolder.strip("/") if subfolder else Path(root)
    if not path.exists():
        raise FileNotFoundError(f"{repo_id}: no subfolder {subfolder!r} in the downloaded snapshot")
    return path


def load_from_hub(
    repo_id: str,
    *,
    subfolder: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
    format: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> Transcoder | TranscoderSet:
    """Download (or reuse from the cache) and load a checkpoint of any supported format.

    Args:
        repo_id: ``"owner/name"`` on the Hugging Face Hub.
        subfolder: a folder inside the repository (e.g. a sparsify hookpoint ``"h.3.mlp"``).
        filename: a single file instead of a folder (e.g. a Dunefsky ``.pt``).
        revision: branch, tag or commit.
        format: one of :data:`~tc_circuits.formats.detect.FORMATS` (default: detected).
        cache_dir: the hub cache folder (default: huggingface_hub's).
        load_kwargs: passed to the format's loader.
    """
    path = download(repo_id, subfolder=subfolder, filename=filename, revision=revision, cache_dir=cache_dir)
    return load_any(path, format=format, **load_kwargs)


def saelens_release(release: str, sae_id: str) -> dict[str, Any]:
    """``repo_id``, ``path``, ``config_overrides`` and ``norm_scaling_factor`` of a SAELens
    pretrained release entry (from the installed ``sae_lens``' ``pretrained_saes.yaml``)."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError as err:
        raise ValueError(
            f"resolving the SAELens release {release!r} needs the sae-lens package (its release "
            f"directory); without it, pass the hub repository: load_from_hub(repo_id, subfolder=path)"
        ) from err
    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise ValueError(f"unknown SAELens release {release!r}")
    entry = directory[release]
    if sae_id not in entry.saes_map:
        raise ValueError(f"SAELens release {release!r} has no SAE {sae_id!r} (e.g. {sorted(entry.saes_map)[:3]})")
    if entry.conversion_func not in (None, "sae_lens", "gemma_2_transcoder", "gemma_3"):
        raise ValueError(
            f"SAELens release {release!r} is stored as {entry.conversion_func!r}, not in SAELens' own "
            f"cfg.json + sae_weights.safetensors format or GemmaScope's / GemmaScope 2's transcoder files; "
            f"only those are supported"
        )
    overrides = entry.config_overrides or {}
    return {
        "repo_id": entry.repo_id,
        "path": entry.saes_map[sae_id],
        "config_overrides": dict(overrides),
        "norm_scaling_factor": (entry.norm_scaling_factor or {}).get(sae_id),
        "conversion_func": entry.conversion_func,
        "model": getattr(entry, "model", None),
    }


def load_saelens_release(
    release: str,
    sae_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    model: Any = None,
    hf_model: Any = None,
) -> Transcoder:
    """A SAELens pretrained-release SAE (``SAE.from_pretrained(release, sae_id)``'s reference),
    downloaded through the Hugging Face cache (``HF_HUB_OFFLINE=1`` reuses it offline), with
    the release's config overrides and norm scaling factor applied as SAELens applies them.

    GemmaScope transcoder releases (``gemma-scope-2b-pt-transcoders``, SAELens'
    ``gemma_2_transcoder`` conversion; GemmaScope 2's ``gemma-scope-2-*-transcoders``, its
    ``gemma_3`` conversion, per-layer transcoders only) load through
    :func:`tc_circuits.formats.gemmascope.load_gemmascope`. ``model`` / ``hf_model``: the
    processed target model and its unprocessed weights, as the loaders take them.
    """
    from tc_circuits.formats.saelens import load_saelens

    ref = saelens_release(release, sae_id)
    conversion = ref.get("conversion_func")
    if conversion == "gemma_3" and ("transcoder" not in ref["path"] or "clt" in ref["path"]):
        raise ValueError(
            f"SAELens release {release!r} / {sae_id!r} is a GemmaScope 2 SAE or cross-layer transcoder "
            f"({ref['path']}); only its per-layer transcoders (transcoder/layer_L_...) are supported"
        )
    folder = download(ref["repo_id"], subfolder=ref["path"], revision=revision, cache_dir=cache_dir)
    if conversion in ("gemma_2_transcoder", "gemma_3"):
        from tc_circuits.formats.gemmascope import load_gemmascope

        return load_gemmascope(folder, model=model, hf_model=hf_model,
                               model_name=None if model is not None else ref.get("model"))
    return load_saelens(folder, overrides=ref["config_overrides"], scaling_factor=ref["norm_scaling_factor"],
                        model=model, hf_model=hf_model)


__all__ = ["download", "load_from_hub", "load_saelens_release", "saelens_release"]
