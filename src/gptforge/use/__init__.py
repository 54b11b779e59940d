"""Using a trained model: loading it from a run, a checkpoint, an HF folder or a Space; eval, chat and the web demo."""
