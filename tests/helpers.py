"""Helpers shared by several test modules."""

from simcaptcha import reader_training, simgan


def patch_saves(monkeypatch, save) -> None:
    """Route every training loop's checkpoint writes (reader, self-training rounds, SimGAN) through ``save``."""
    monkeypatch.setattr(reader_training, "save_checkpoint", save)
    monkeypatch.setattr(simgan, "save_checkpoint", save)
