"""LLM backends and model loading for the chat loop."""
