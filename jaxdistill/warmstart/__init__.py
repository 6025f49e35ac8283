"""Where a run starts: the model and tokenizer (`initial_model`: a local Hugging Face
directory, or the CPU presets' own, built locally) and the supervised warm start that teaches
a random CPU-preset model the task's format (`sft`). The CLI, bench and experiments share
both."""
