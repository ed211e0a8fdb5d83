"""Shipped senpath model weights and their model card (package data, installed as senpath.models)."""
