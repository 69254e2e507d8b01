"""Coders: transcoders, skip transcoders and SAEs, their activation functions and losses."""
