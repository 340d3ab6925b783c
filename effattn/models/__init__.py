"""Decoder LM, its MLP, generation and Hugging Face import/export."""
