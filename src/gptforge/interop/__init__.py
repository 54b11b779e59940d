"""Other formats: reading and writing Hugging Face GPT-2 folders, the hub, and Space folders."""
