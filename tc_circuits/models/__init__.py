"""Models: loading (TransformerLens names, local Hugging Face folders), hook sites, weight-processing state, tokenizers."""
